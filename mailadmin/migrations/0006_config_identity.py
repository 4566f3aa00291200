"""Configuration identity (issue 10.3): the site's identity, made once per database, and
the record digest that gives every committed change (a description too) its own version."""

import uuid

from django.db import migrations, models


def make_identity(apps, schema_editor):  # type: ignore[no-untyped-def]
    # One random identity per database, made here so every process of the site agrees
    # from the start (services.config.site_identity() makes it if a flush removed it).
    SiteIdentity = apps.get_model("mailadmin", "SiteIdentity")
    SiteIdentity.objects.get_or_create(id=1, defaults={"uuid": uuid.uuid4()})


class Migration(migrations.Migration):
    dependencies = [
        ("mailadmin", "0005_proxy_protocol"),
    ]

    operations: list[migrations.operations.base.Operation] = [
        migrations.AddField(
            model_name="configsnapshot",
            name="record_digest",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.CreateModel(
            name="SiteIdentity",
            fields=[
                (
                    "id",
                    models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False),
                ),
                ("uuid", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("created", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.RunPython(make_identity, migrations.RunPython.noop),
    ]
