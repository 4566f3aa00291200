"""Outbound TLS levels and cleartext AUTH per hop (issue 10.5).

The old check box "TLS encryption" meant STARTTLS required, with any certificate: it
becomes the level "required"; cleared, it was "use STARTTLS when offered": "opportunistic".
Nobody has yet allowed AUTH in clear, so no hop sends it without TLS after this.
"""

from django.db import migrations, models

import mailadmin.validators

MODELS = ("virtualserver", "domain")


def _levels_from_boxes(apps, schema_editor):  # type: ignore[no-untyped-def]
    for name in MODELS:
        model = apps.get_model("mailadmin", name)
        model.objects.filter(outbound_tls=True).update(outbound_tls_level="required")
        model.objects.filter(outbound_tls=False).update(outbound_tls_level="opportunistic")


def _boxes_from_levels(apps, schema_editor):  # type: ignore[no-untyped-def]
    for name in MODELS:
        model = apps.get_model("mailadmin", name)
        required = model.objects.exclude(outbound_tls_level="opportunistic")
        required.update(outbound_tls=True)
        model.objects.filter(outbound_tls_level="opportunistic").update(outbound_tls=False)


def _level_field() -> models.CharField:
    return models.CharField(
        "outbound TLS",
        max_length=16,
        choices=[
            ("opportunistic", "Opportunistic: TLS when the host offers it"),
            ("required", "Required: TLS or no delivery, with any certificate"),
            ("verified", "Required and verified: a trusted certificate naming the host"),
        ],
        default="opportunistic",
    )


def _ca_field() -> models.TextField:
    return models.TextField(
        "CA certificates",
        blank=True,
        default="",
        help_text="PEM certificates that verified TLS trusts; empty: the system's CAs.",
        validators=[mailadmin.validators.pem_certificates],
    )


def _cleartext_field() -> models.BooleanField:
    return models.BooleanField(
        "allow authentication without TLS",
        default=False,
        help_text="Send the user name and password even when the session is not encrypted.",
    )


class Migration(migrations.Migration):
    dependencies = [
        ("mailadmin", "0007_auth_brake"),
    ]

    operations = [
        *(migrations.AddField(name, "outbound_tls_level", _level_field()) for name in MODELS),
        migrations.RunPython(_levels_from_boxes, _boxes_from_levels),
        *(migrations.RemoveField(name, "outbound_tls") for name in MODELS),
        *(migrations.RenameField(name, "outbound_tls_level", "outbound_tls") for name in MODELS),
        *(migrations.AddField(name, "outbound_tls_ca", _ca_field()) for name in MODELS),
        *(
            migrations.AddField(name, "outbound_cleartext_auth", _cleartext_field())
            for name in MODELS
        ),
    ]
