"""AUTH brake per virtual server and the per-client connection limit (issue 10.4)."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailadmin", "0006_config_identity"),
    ]

    operations: list[migrations.operations.base.Operation] = [
        migrations.AddField(
            model_name="virtualserver",
            name="auth_block_after_failures",
            field=models.PositiveIntegerField(
                default=10,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(1000),
                ],
            ),
        ),
        migrations.AddField(
            model_name="virtualserver",
            name="auth_block_minutes",
            field=models.PositiveIntegerField(
                default=15,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(10080),
                ],
            ),
        ),
        migrations.AddField(
            model_name="virtualserver",
            name="auth_brake_enabled",
            field=models.BooleanField(default=True, verbose_name="brake password guessing"),
        ),
        migrations.AddField(
            model_name="virtualserver",
            name="auth_failure_window_minutes",
            field=models.PositiveIntegerField(
                default=15,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(10080),
                ],
            ),
        ),
        migrations.AddField(
            model_name="virtualserver",
            name="auth_failures_before_delay",
            field=models.PositiveIntegerField(
                default=3, validators=[django.core.validators.MaxValueValidator(1000)]
            ),
        ),
        migrations.AddField(
            model_name="virtualserver",
            name="client_connection_limit",
            field=models.PositiveIntegerField(
                blank=True,
                default=50,
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
    ]
