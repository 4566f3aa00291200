"""The wizards: New SMTP Virtual Server and New Domain, validated step by step.

Each step is a small form; earlier and later answers ride along as hidden inputs, so a
wizard keeps no server-side state and Back loses nothing. "Next" checks the answers so
far by running the service's own validation in a transaction that is rolled back, and
shows only the errors that belong to the steps already answered. "Finish" calls the
real service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from mailadmin.console.forms import attach_errors, describe
from mailadmin.exceptions import ConfigError, FieldError

WIZARD_KEYS = ("csrfmiddlewaretoken", "wizard_step", "nav")


@dataclass(frozen=True)
class Step:
    form: type[forms.Form]
    title: str
    intro: str


@dataclass(frozen=True)
class Wizard:
    """``check`` returns the service's errors for the answers so far (nothing saved);
    ``finish`` creates the object or raises ConfigError; ``paths`` maps error paths to
    the step fields that answer them."""

    title: str
    steps: tuple[Step, ...]
    paths: dict[tuple[str | int, ...], str]
    check: Callable[[dict[str, Any], int], list[FieldError]]
    finish: Callable[[dict[str, Any]], HttpResponse]
    cancel_url: str


class _Rollback(Exception):
    pass


def dry_run(action: Callable[[], object]) -> list[FieldError]:
    """The errors ``action`` raises, with everything it wrote rolled back either way."""
    try:
        with transaction.atomic():
            action()
            raise _Rollback
    except _Rollback:
        return []
    except ConfigError as exc:
        return exc.errors


def run_wizard(
    request: HttpRequest,
    wizard: Wizard,
    render: Callable[[dict[str, Any], int], HttpResponse],
) -> HttpResponse:
    """Drive ``wizard`` for this request; ``render(context, status)`` shows a step."""
    if request.method != "POST":
        return _show(wizard, 0, wizard.steps[0].form(), request, render)
    last = len(wizard.steps) - 1
    step = min(max(int(request.POST.get("wizard_step", "0") or 0), 0), last)
    nav = request.POST.get("nav", "next")
    if nav == "back":
        return _show(
            wizard, max(step - 1, 0), _prefilled(wizard, step - 1, request), request, render
        )
    bound = [s.form(request.POST) for s in wizard.steps[: step + 1]]
    for index, form in enumerate(bound):
        if not form.is_valid():
            describe(form)
            return _show(wizard, index, form, request, render, status=400)
    data: dict[str, Any] = {}
    for form in bound:
        data.update(form.cleaned_data)
    errors = _answered(wizard, wizard.check(data, step), step)
    if not errors and nav == "finish" and step == last:
        try:
            return wizard.finish(data)
        except ConfigError as exc:
            errors = exc.errors
    if errors:
        index = _owner(wizard, errors, step)
        unplaced = attach_errors(bound[index], ConfigError(errors), wizard.paths)
        return _show(wizard, index, bound[index], request, render, unplaced, status=400)
    if step == last:
        return _show(wizard, step, bound[step], request, render)
    return _show(wizard, step + 1, _prefilled(wizard, step + 1, request), request, render)


def _field_of(wizard: Wizard, error: FieldError) -> str | None:
    path = error.path[:-1] if error.path and isinstance(error.path[-1], int) else error.path
    return wizard.paths.get(path)


def _answered(wizard: Wizard, errors: list[FieldError], step: int) -> list[FieldError]:
    """Errors about answers given so far; the last step reports every error."""
    if step == len(wizard.steps) - 1:
        return errors
    fields = {name for s in wizard.steps[: step + 1] for name in s.form.base_fields}
    return [e for e in errors if _field_of(wizard, e) in fields]


def _owner(wizard: Wizard, errors: list[FieldError], step: int) -> int:
    """The earliest step whose fields the errors name (the current one if none does)."""
    for index, answered in enumerate(wizard.steps[: step + 1]):
        fields = set(answered.form.base_fields)
        if any(_field_of(wizard, e) in fields for e in errors):
            return index
    return step


def _prefilled(wizard: Wizard, index: int, request: HttpRequest) -> forms.Form:
    cls = wizard.steps[max(index, 0)].form
    initial: dict[str, Any] = {
        name: request.POST[name] for name in cls.base_fields if name in request.POST
    }
    if str(index) in request.POST.getlist("seen"):  # unticked boxes post nothing
        for name, field in cls.base_fields.items():
            if isinstance(field, forms.BooleanField):
                initial[name] = name in request.POST
    return cls(initial=initial)


def _show(
    wizard: Wizard,
    index: int,
    form: forms.Form,
    request: HttpRequest,
    render: Callable[[dict[str, Any], int], HttpResponse],
    unplaced: list[FieldError] | None = None,
    status: int = 200,
) -> HttpResponse:
    own = set(form.fields)
    carry = [
        (name, value)
        for name, values in request.POST.lists()
        if name not in own and name not in WIZARD_KEYS
        for value in values
    ]
    context = {
        "wizard": wizard,
        "step": wizard.steps[index],
        "index": index,
        "number": index + 1,
        "count": len(wizard.steps),
        "first": index == 0,
        "last": index == len(wizard.steps) - 1,
        "form": form,
        "carry": carry,
        "wizard_errors": unplaced or [],
        "step_titles": [s.title for s in wizard.steps],
    }
    return render(context, status)
