"""``import spectrum_rs`` (and ``spectrum_rs.integrations``) imports no training library;
each integration imports its host library only when it is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import spectrum_rs, spectrum_rs.integrations as integrations
heavy = ("torch", "transformers", "peft", "axolotl", "accelerate")
loaded = sorted(m for m in heavy if m in sys.modules)
assert not loaded, loaded
assert {"freeze", "scan_model", "peft_config", "SpectrumCallback", "SpectrumPlugin"} <= set(integrations.__all__)
from spectrum_rs.integrations import freeze
assert "torch" in sys.modules and "transformers" not in sys.modules and "peft" not in sys.modules
from spectrum_rs.integrations import peft_target_modules
assert "peft" not in sys.modules  # peft itself is imported by peft_config()
print("ok")
"""


def test_import_spectrum_rs_stays_light():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_unknown_names_raise_attribute_error():
    import spectrum_rs.integrations as integrations

    with pytest.raises(AttributeError):
        integrations.no_such_thing  # noqa: B018
