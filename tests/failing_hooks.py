"""A session hooks module (DB_CONFIGURE, DB_RESET) that fails at import with a message on two lines and a terminal's
colour escape: a start error must show it on one line, escaped."""
raise ValueError('first line\nsecond \x1b[31mred')
