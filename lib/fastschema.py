"""A fast path for marshmallow schemas: valid bodies load without Schema.load, anything else goes to marshmallow.

marshmallow's `Schema.load` costs tens of microseconds even for one Integer field, most of it in the
machinery around the fields (error store, hooks, unknown keys). Most bodies are valid. So for a schema
without load hooks, the fast path loads each field itself: a value that already has the JSON type of a
plain field (Integer, String, Email, Boolean, Float) is checked by the field's validators only, and any
other field deserializes its value as marshmallow would. Then the schema's validates_schema methods run.
It never builds an error: on any doubt it returns None, and marshmallow loads the body, so every 422
keeps marshmallow's field map.
"""
from dataclasses import dataclass

from marshmallow import RAISE, ValidationError, fields, missing
from marshmallow.decorators import VALIDATES_SCHEMA
from marshmallow.validate import And

# Field classes whose value loads unchanged when it has exactly one of these JSON types. Others (a
# string for an Integer, an int for a Float) may load too, converted: the field's deserialize decides those.
JSON_TYPES = {fields.Integer: (int,), fields.String: (str,), fields.Email: (str,), fields.Boolean: (bool,),
              fields.Float: (float,)}
# Hooks that change or check data in ways the fast path does not repeat; such schemas always use load.
UNSUPPORTED_HOOKS = ('pre_load', 'post_load', 'validates')
# Fields that pass the schema's partial setting on to a nested schema.
NESTING_FIELDS = (fields.Nested, fields.Pluck)


@dataclass(frozen=True)
class FieldPlan:
    """How the fast path loads one field."""

    data_key: str
    attribute: str
    types: tuple
    validate: And
    deserialize: object
    required: bool
    load_default: object

    def load(self, value, body):
        """Return the loaded value; raise ValidationError when it is not valid (or not plainly valid)."""
        if type(value) in self.types:
            self.validate(value)
            return value
        if self.deserialize is None:
            raise ValidationError('left to marshmallow')
        return self.deserialize(value, self.data_key, body)


def field_plan(name, field):
    """Return the FieldPlan of a field, or None when the fast path cannot load it."""
    if isinstance(field, NESTING_FIELDS) or getattr(field, 'pre_load', None) or getattr(field, 'post_load', None):
        return None
    types = JSON_TYPES.get(type(field))
    return FieldPlan(field.data_key or name, field.attribute or name, types or (), And(*field.validators),
                     None if types else field.deserialize, field.required, field.load_default)


def takes_fast_path(schema):
    """Tell whether schema loads one object, without load hooks or partial loading, refusing unknown keys."""
    hooks = getattr(schema, '_hooks', None)
    return (hooks is not None and not any(hooks.get(tag) for tag in UNSUPPORTED_HOOKS) and not schema.many
            and not schema.partial and schema.unknown == RAISE)


def schema_validators(schema):
    """Return the schema's validates_schema methods as marshmallow calls them: collection ones first."""
    hooks = sorted(schema._hooks.get(VALIDATES_SCHEMA, ()), key=lambda hook: not hook[1])
    return [(getattr(schema, name), options.get('pass_original', False)) for name, _, options in hooks]


def fast_loader(schema):
    """Return a function that loads a valid body of schema, or None for schemas that always use load."""
    plans = [field_plan(name, field) for name, field in schema.load_fields.items()] if takes_fast_path(schema) else [None]
    if None in plans:
        return None
    keys = frozenset(plan.data_key for plan in plans)
    validators = schema_validators(schema)

    def load(body):
        """Return the loaded body, or None when marshmallow must decide."""
        if not keys.issuperset(body):
            return None
        try:
            loaded = load_fields(plans, body)
            for validator, pass_original in validators:
                arguments = (loaded, body) if pass_original else (loaded,)
                validator(*arguments, partial=schema.partial, many=False, unknown=RAISE)
        except ValidationError:
            return None
        return loaded
    return load


def load_fields(plans, body):
    """Return the loaded fields of body; raise ValidationError on any doubt."""
    loaded = {}
    for plan in plans:
        value = body.get(plan.data_key, missing)
        if value is not missing:
            loaded[plan.attribute] = plan.load(value, body)
        elif plan.required:
            raise ValidationError('left to marshmallow')
        elif plan.load_default is not missing:
            loaded[plan.attribute] = plan.load_default() if callable(plan.load_default) else plan.load_default
    return loaded
