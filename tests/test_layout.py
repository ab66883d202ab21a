"""The package layout and the rule-to-code path: what a newcomer relies on to find things."""

from __future__ import annotations

import re

from conftest import REPO
from sance_core.stages import STAGES

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))


def _rule_blocks() -> dict[str, str]:
    """Rule name -> its text, from every rule file."""
    blocks: dict[str, str] = {}
    for path in RULE_FILES:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            blocks[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
    return blocks


def test_every_scripted_rule_runs_the_stage_of_its_own_name():
    blocks = _rule_blocks()
    scripted = {name: body for name, body in blocks.items() if "script:" in body}
    assert scripted, "no rule with a script found"
    for name, body in scripted.items():
        assert '"../scripts/run_stage.py"' in body, f"rule {name} does not use the one stage script"
        assert name in STAGES, f"rule {name} has no stage of the same name"
    assert [p.name for p in (REPO / "workflow" / "scripts").glob("*.py")] == ["run_stage.py"]
    # and every stage is reached by a rule (sance run reaches the same functions)
    assert set(STAGES) <= set(scripted), sorted(set(STAGES) - set(scripted))


def test_stage_entries_live_in_the_stages_package():
    for name, entry in STAGES.items():
        assert entry.module.startswith("sance_core.stages."), (name, entry.module)


def test_every_report_output_has_a_caption():
    for path in RULE_FILES:
        text = path.read_text()
        for match in re.finditer(r"report\(", text):
            call = text[match.end(): text.find("),", match.end())]
            assert "caption=" in call, f"{path.name}: report() without a caption: {call[:80]}"
            caption = re.search(r'caption="([^"]+)"', call).group(1)
            assert (path.parent / caption).resolve().is_file(), f"{path.name}: missing {caption}"


def test_shared_constants_are_defined_once():
    pattern = re.compile(r"^(IGNORE_INDEX|MAP_STRIDE) = ", re.M)
    defining = [p.relative_to(REPO).as_posix() for p in (REPO / "sance_core").rglob("*.py")
                if pattern.search(p.read_text())]
    assert defining == ["sance_core/constants.py"]


# stages whose jobs read and write arrays, images and tables only: their modules must not import
# torch (about 3 CPU s per job; a demo run has about 25 such jobs)
TORCH_FREE_STAGES = (
    "demo_data", "validate_dataset", "shard_ids", "make_seeds", "evaluate_cams", "evaluate_seeds",
    "export_pseudo_label_pngs", "evaluate_pseudo_labels", "evaluate_segmenter", "evaluate_contours",
    "summarize", "ablation_table", "figure_qualitative", "figure_iou_bars", "figure_pr_curves",
    "figure_epoch_miou", "figure_training_curves",
)


def test_torch_free_stages_do_not_import_torch():
    """What a job of each of these stages imports before it runs (the adapter and the stage's
    module), checked in a fresh process: no torch, no torchvision."""
    import subprocess
    import sys

    assert set(TORCH_FREE_STAGES) <= set(STAGES)
    code = ("import sys\n"
            "import sance_core.stages.adapter\n"
            "from sance_core.stages import get_stage\n"
            f"for name in {list(TORCH_FREE_STAGES)!r}:\n"
            "    get_stage(name)\n"
            "    assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, name\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
