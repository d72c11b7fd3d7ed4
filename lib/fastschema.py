"""A fast path for plain marshmallow schemas: valid bodies load without Schema.load, anything else goes to marshmallow.

marshmallow's `Schema.load` costs several microseconds even for one Integer field, most of it in the machinery
around the fields (error store, hook lookups, unknown keys). Most bodies are valid. For a schema that is plain
(its classes declare fields and Meta only: no methods, so no hooks; one object, no partial, unknown keys
refused; every field of a class listed in LOADED_BY_DESERIALIZE), the fast path makes the calls
`Schema.load` would make, field by field: `field.deserialize(value, data_key, body)`. Where the result is
known to be the value itself (a str for a String, an int for an Integer, a bool for a Boolean whose truthy
and falsy sets keep it), it runs only the field's validators. It never builds an error: on any
ValidationError it returns None, and marshmallow loads the body, so every 422 keeps marshmallow's field map.
Everything here is decided on public information: class dictionaries, field attributes, schema options.
"""
from dataclasses import dataclass

from marshmallow import RAISE, Schema, ValidationError, fields, missing
from marshmallow.schema import SchemaMeta
from marshmallow.validate import And

# Field classes (exactly these, not subclasses) whose deserialize depends on the field and the value alone:
# no nested schema, so nothing of the schema's partial or unknown settings is passed on.
LOADED_BY_DESERIALIZE = frozenset({fields.Boolean, fields.Date, fields.DateTime, fields.Decimal, fields.Email,
                                   fields.Float, fields.Integer, fields.String, fields.UUID})


class DeclaresNothing(Schema):
    """A schema class that declares nothing: its dictionary holds what the class statement and SchemaMeta put there."""

    class Meta:
        register = False


# Keys any schema class's dictionary may hold besides fields: the class statement's, SchemaMeta's and Meta.
PLAIN_CLASS_KEYS = frozenset(vars(DeclaresNothing))
# What Schema.__init__ sets on an instance; anything else was added (an override of a method, say).
PLAIN_INSTANCE_KEYS = frozenset(vars(Schema()))
SCHEMA_BASES = frozenset(Schema.__mro__)


@dataclass(frozen=True)
class FieldPlan:
    """How the fast path loads one field."""

    field: fields.Field
    data_key: str
    attribute: str
    unchanged_types: tuple
    validate: And

    def load(self, body):
        """Return the field's loaded value (missing for none); raise ValidationError as Schema.load would store one."""
        value = body.get(self.data_key, missing)
        if type(value) in self.unchanged_types:
            self.validate(value)
            return value
        return self.field.deserialize(value, self.data_key, body)


def keeps_booleans(field):
    """Tell whether a Boolean field loads true as True and false as False (its truthy and falsy sets allow it)."""
    truthy, falsy = field.truthy, field.falsy
    return not truthy or (True in truthy and False not in truthy and False in falsy)


def unchanged_types(field):
    """Return the JSON types whose values the field loads as they are, so only its validators need to run."""
    if field.pre_load or field.post_load:
        return ()
    if type(field) is fields.Integer:
        return (int,)
    if type(field) in (fields.String, fields.Email):
        return (str,)
    if type(field) is fields.Boolean and keeps_booleans(field):
        return (bool,)
    return ()


def field_plan(name, field):
    """Return the FieldPlan of a field, or None when Schema.load must load it."""
    attribute = field.attribute or name
    if type(field) not in LOADED_BY_DESERIALIZE or '.' in attribute:  # a dotted attribute loads into nested dicts
        return None
    data_key = name if field.data_key is None else field.data_key
    return FieldPlan(field, data_key, attribute, unchanged_types(field), And(*field.validators))


def declares_fields_only(schema_class):
    """Tell whether schema_class and its bases below Schema declare fields and Meta only: no methods, no hooks."""
    if type(schema_class) is not SchemaMeta:
        return False
    return all(key in PLAIN_CLASS_KEYS or isinstance(value, fields.Field)
               for klass in schema_class.__mro__ if klass not in SCHEMA_BASES for key, value in vars(klass).items())


def has_no_hooks(schema):
    """Tell whether schema's classes declare fields and Meta only and nothing was added to the instance: what it
    loads is its fields' values alone, under their attributes (no pre_load or post_load can change the keys)."""
    return declares_fields_only(type(schema)) and PLAIN_INSTANCE_KEYS.issuperset(vars(schema))


def is_plain(schema):
    """Tell whether schema loads one object of plain fields, refusing unknown keys, with nothing added to it."""
    return has_no_hooks(schema) and not schema.many and not schema.partial and schema.unknown == RAISE


def fast_loader(schema, enabled=True):
    """Return a function that loads a valid body of schema, or None when schema always uses Schema.load."""
    if not enabled or not is_plain(schema):
        return None
    plans = [field_plan(name, field) for name, field in schema.load_fields.items()]
    if None in plans:
        return None
    keys = frozenset(plan.data_key for plan in plans)

    def load(body):
        """Return the loaded body, or None when marshmallow must decide."""
        if type(body) is not dict or not keys.issuperset(body):
            return None
        loaded = {}
        try:
            for plan in plans:
                value = plan.load(body)
                if value is not missing:
                    loaded[plan.attribute] = value
        except ValidationError:
            return None
        return loaded
    return load
