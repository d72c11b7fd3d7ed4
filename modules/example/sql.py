"""SQL of the example module."""
PEOPLE_BY_NAME = 'SELECT id, name, email, updated_at FROM example_people WHERE name = %(name)s ORDER BY id'
