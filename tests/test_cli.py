"""The command-line conventions: --key=value overrides, --help, unknown keys, validation."""

from dataclasses import dataclass, field
from typing import Optional

import pytest

from minigpt.cli import UserError, check, parse_config, run


@dataclass
class Demo:
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    steps: int = 10
    name: str = "x"
    flash: bool = False
    init: Optional[str] = None
    models: list = field(default_factory=list)

    def validate(self):
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")


def test_overrides_and_types():
    cfg = parse_config(Demo, ["--lr=0.5", "--steps", "3", "--name=a=b", "--flash", "--init=none"])
    assert (cfg.lr, cfg.steps, cfg.name, cfg.flash, cfg.init) == (0.5, 3, "a=b", True, None)
    assert parse_config(Demo, ["--flash=false"]).flash is False
    assert parse_config(Demo, ["--lr", "1"]).lr == 1.0          # an int is a fine float
    assert parse_config(Demo, ["--models", "a", "b", "--steps=2"]).models == ["a", "b"]
    assert parse_config(Demo, ["--models=a,b"]).models == ["a", "b"]


def test_unknown_key_lists_valid_ones():
    with pytest.raises(UserError, match="unknown option --lrr; valid options: --lr, --steps"):
        parse_config(Demo, ["--lrr=1"])


def test_bad_values_are_one_line_errors():
    with pytest.raises(UserError, match="--steps: expected int, got 'ten'"):
        parse_config(Demo, ["--steps=ten"])
    with pytest.raises(UserError, match="--lr must be > 0, got -1.0"):
        parse_config(Demo, ["--lr=-1"])
    with pytest.raises(UserError, match="unexpected argument"):
        parse_config(Demo, ["lr=1"])


def test_help_lists_keys_defaults_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--lr=float [0.001]  learning rate" in out and "--steps=int [10]" in out


def test_run_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        run(lambda cfg: None, Demo, ["--bogus=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown option --bogus") and err.count("\n") == 1
