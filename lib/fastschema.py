"""A fast path for flat marshmallow schemas: valid bodies load in plain Python, anything else goes to marshmallow.

marshmallow's `Schema.load` costs tens of microseconds even for one Integer field. Most bodies are valid,
and for a flat schema (no hooks, fields of plain JSON types) a valid body loads to exactly the values it
holds. So the fast path only accepts what it can prove valid, and it never builds an error: on any doubt
it returns None, and marshmallow loads the body, so every 422 keeps marshmallow's field map.
"""
from dataclasses import dataclass

from marshmallow import RAISE, ValidationError, fields, missing
from marshmallow.validate import And

# Field classes whose value loads unchanged when it has exactly one of these JSON types. Others (a
# string for an Integer, an int for a Float) may load too, converted: marshmallow decides those.
JSON_TYPES = {fields.Integer: (int,), fields.String: (str,), fields.Email: (str,), fields.Boolean: (bool,),
              fields.Float: (float,)}
HOOKS = ('pre_load', 'post_load', 'validates', 'validates_schema')


@dataclass(frozen=True)
class FieldPlan:
    """How the fast path loads one field."""

    data_key: str
    attribute: str
    types: tuple
    validate: And
    required: bool
    load_default: object


def field_plan(name, field):
    """Return the FieldPlan of a field, or None when the fast path cannot load it."""
    types = JSON_TYPES.get(type(field))
    if types is None or getattr(field, 'pre_load', None) or getattr(field, 'post_load', None):
        return None
    return FieldPlan(field.data_key or name, field.attribute or name, types, And(*field.validators),
                     field.required, field.load_default)


def is_flat(schema):
    """Tell whether schema loads an object with no hooks, no partial loading and unknown keys refused."""
    hooks = getattr(schema, '_hooks', None)
    return (hooks is not None and not any(hooks.get(tag) for tag in HOOKS) and not schema.many
            and not schema.partial and schema.unknown == RAISE)


def fast_loader(schema):
    """Return a function that loads a valid body of a flat schema, or None for other schemas."""
    plans = [field_plan(name, field) for name, field in schema.load_fields.items()] if is_flat(schema) else [None]
    if None in plans:
        return None
    keys = frozenset(plan.data_key for plan in plans)

    def load(body):
        """Return the loaded body, or None when marshmallow must decide."""
        if not keys.issuperset(body):
            return None
        loaded = {}
        for plan in plans:
            value = body.get(plan.data_key, missing)
            if value is missing:
                if plan.required:
                    return None
                if plan.load_default is not missing:
                    loaded[plan.attribute] = plan.load_default() if callable(plan.load_default) else plan.load_default
            elif type(value) not in plan.types or not passes(plan.validate, value):
                return None
            else:
                loaded[plan.attribute] = value
        return loaded
    return load


def passes(validate, value):
    """Tell whether value passes the field's validators."""
    try:
        validate(value)
    except ValidationError:
        return False
    return True
