"""Network values fitted to the queue's columns before they reach the ORM.

:func:`smtpworker.core.storable.storable` does the work (visible stand-ins for what no database
stores, then a cut); this module only reads each column's limit from its model field, so
the numbers live in one place, the models.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models

from smtpworker.core.storable import storable

__all__ = ["Unstorable", "exact", "fit", "fit_row"]

Row = TypeVar("Row", bound=models.Model)


class Unstorable(ValueError):
    """A value that cannot be stored as it is, where changing it would change what is
    done (a recipient address is where the message goes)."""


def fit(model: type[models.Model], field: str, value: str) -> str:
    """``value`` made storable in ``model.field``: cut to the field's ``max_length``
    (a text field without one is not cut)."""
    column = model._meta.get_field(field)
    assert isinstance(column, models.Field)  # not a reverse relation
    return storable(value, column.max_length)


def fit_row(row: Row) -> Row:
    """Make every text value of an unsaved ``row`` storable, in place; returns it."""
    for field in row._meta.concrete_fields:
        if isinstance(field, models.CharField | models.TextField):
            value = getattr(row, field.attname)
            if isinstance(value, str):
                setattr(row, field.attname, storable(value, field.max_length))
    return row


def exact(model: type[models.Model], field: str, value: str) -> str:
    """``value`` if ``model.field`` can store it as it is; raises :class:`Unstorable`
    naming the field otherwise."""
    if fit(model, field, value) != value:
        raise Unstorable(f"its {field} {value[:100]!r} cannot be stored as it is")
    return value
