"""A migration's SQL text split as yoyo splits it (sqlparse), and the statements that end or begin a transaction
found in it (lib/db/migrate.py). Not for an action's queries: sqlparse's split is not PostgreSQL's (a column named
`begin` ends its splitting, a nested comment or a string ending in a backslash misleads it; trial AJ)."""
import re

import sqlparse

# What may come before a statement's own text: blanks, `--` comments and `/* */` comments (not nested).
LEADING_COMMENTS = re.compile(r'(?:\s+|--[^\n]*|/\*.*?\*/)*', re.DOTALL)

# A statement that ends or begins a transaction (PostgreSQL's transaction control, savepoints and prepared
# transactions' COMMIT or ROLLBACK PREPARED aside): in a file run in a transaction, it commits part of the file, and
# the rest, and the file's record, go in another.
TRANSACTION_CONTROL = re.compile(r'(?:BEGIN|START\s+TRANSACTION|COMMIT|END|ABORT|ROLLBACK|PREPARE\s+TRANSACTION)\b'
                                 r'(?!\s+(?:(?:WORK|TRANSACTION)\s+)?(?:TO|PREPARED)\b)', re.IGNORECASE)
def statements_of(text):
    """Yield (index, offset, statement) of each statement of a migration's text, stripped, as yoyo splits it (with
    sqlparse): offset is where it starts in text."""
    position = 0
    for index, statement in enumerate(part.strip() for part in sqlparse.split(text) if part.strip()):
        start = text.find(statement, position)
        position = start + len(statement)
        yield index, start, statement


def transaction_control(text):
    """Return (line, keyword) of the first statement of a migration's text that controls its transaction
    (TRANSACTION_CONTROL), or None."""
    for _, start, statement in statements_of(text):
        body = LEADING_COMMENTS.match(statement).end()
        control = TRANSACTION_CONTROL.match(statement, body)
        if control:
            return text.count('\n', 0, start + body) + 1, ' '.join(control[0].split()).upper()
    return None
