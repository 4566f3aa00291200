"""PROXY protocol (issue 7): a per-binding flag and the trusted proxy access list."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailadmin", "0004_message_node"),
    ]

    operations = [
        migrations.AddField(
            model_name="binding",
            name="proxy_protocol",
            field=models.BooleanField(default=False, verbose_name="PROXY protocol"),
        ),
        migrations.AlterField(
            model_name="accessentry",
            name="list",
            field=models.CharField(
                choices=[
                    ("connection", "Connection control"),
                    ("relay", "Relay restrictions"),
                    ("proxy", "Trusted proxies"),
                ],
                max_length=16,
            ),
        ),
    ]
