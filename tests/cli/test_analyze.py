import json
from pathlib import Path

import pytest
import yaml

from normapps.cli import main
from normapps.cli.analyze import build_parser
from normapps.tasks.conditioning import OUTPUT_FILES

QUICK = str(Path(__file__).resolve().parents[2] / "configs" / "analyze" / "quick.yaml")
FULL = str(Path(__file__).resolve().parents[2] / "configs" / "analyze" / "conditioning.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_analyze_refuses_to_replace_results_then_writes_them_with_overwrite(tmp_path, capsys):
    (tmp_path / "conditioning.md").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "-c", QUICK, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'conditioning.md'} already exists; pass --overwrite to replace it" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conditioning.md"]  # refused before any work

    assert main(["analyze", "-c", QUICK, "--out", str(tmp_path), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)
    md = (tmp_path / "conditioning.md").read_text()
    assert md.startswith("# Conditioning") and f"normapps analyze -c {QUICK} --out {tmp_path} --overwrite" in md
    assert "| `features.3` |" in md and "## MLP empirical Fisher" in md and "Reading (computed from this table)" in md
    data = json.loads((tmp_path / "conditioning.json").read_text())
    assert set(data["layers"]) == {"none", "bn", "dbn", "ws"} == set(data["ratios_to_none"])
    spectrum = data["fisher"]["dbn"]["0"]["trained"]["batch"]
    assert spectrum["condition"] >= spectrum["robust_condition"] >= 1 and spectrum["eigenvalues"][0] == 1.0
    assert "eigenvalues" not in data["layers"]["bn"]["0"]["init"]["head"]["second_moment"]  # only plotted spectra
    for name in OUTPUT_FILES[2:]:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert "analyze: dbn, seed 0: spectra after training" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--norms", "[none, bnn]"], "bad config: unknown norm 'bnn'"),
        (["--steps", "-3"], "bad config: steps must be an int >= 0, got -3"),
        (["--covariance_samples", "20"], "bad config: covariance_samples (20) must be a multiple of batch_size (16)"),
        (["--steps", "many"], 'Parser key "steps"'),
    ],
)
def test_bad_config_values_exit_with_a_clear_error(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "-c", QUICK, "--out", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_print_config_gives_a_config_that_parses_to_the_same_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "-c", FULL, "--steps", "7", "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["steps"] == 7
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    parser = build_parser()
    again, original = parser.parse_args(["-c", str(path)]), parser.parse_args(["-c", FULL, "--steps", "7"])
    for key in ("norms", "seeds", "steps", "group_size", "mlp_hidden", "fisher_samples", "out"):
        assert again[key] == original[key]


def test_help_lists_analyze(capsys):
    assert main([]) == 0
    assert "analyze" in capsys.readouterr().out
