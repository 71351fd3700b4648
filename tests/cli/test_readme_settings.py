"""README's settings table and the code agree: every setting is documented, and every
documented variable is a setting or a documented pass-through."""

from __future__ import annotations

import re
from pathlib import Path

from invoice_batch.settings import Settings

README = Path(__file__).parents[2] / "README.md"
# Variables the table documents that are not fields of Settings, and why.
PASS_THROUGH = {
    "KAFKA_*": "any other KAFKA_ variable goes to librdkafka (Settings.kafka_options)",
    "INVOICE_BATCH_CONFIG": "the config file's path, read by load_settings itself",
}
# Fields that are not variables of their own.
NOT_VARIABLES = {"kafka_options": "filled from KAFKA_* (the pass-through row)"}


def documented_variables() -> set[str]:
    text = README.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", first_cell))
    return names


def test_every_setting_in_the_code_is_in_the_readme_table() -> None:
    documented = documented_variables()
    missing = [
        name.upper()
        for name in Settings.model_fields
        if name not in NOT_VARIABLES and name.upper() not in documented
    ]
    assert missing == [], f"add these to README's settings table: {missing}"


def test_every_variable_in_the_readme_table_is_a_setting_or_a_pass_through() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    unknown = sorted(documented_variables() - fields - set(PASS_THROUGH))
    assert unknown == [], f"README documents variables the code does not read: {unknown}"
