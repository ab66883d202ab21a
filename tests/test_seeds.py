"""CAM seeds: IRNet's cam_to_ir_label semantics (pad/argmax, CRF, combine), the stage and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sance_core.config import ConfigError
from sance_core.ops.crf import CRFConfig
from sance_core.data.dataset import DatasetSpec
from sance_core.io.images import DataError
from sance_core.io.palette import save_label_png
from sance_core.stages.seeds import combine_confidence, make_seed, threshold_labels
from sance_core.stages import run_stage
from sance_core.io.store import ArtifactReader, ArtifactWriter

CLASSES = ("background", "a", "b", "c")


def irnet_reference(image, cams, keys, fg=0.30, bg=0.05):
    """A literal transcription of IRNet's step/cam_to_ir_label._work (CRF via raw pydensecrf calls)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    def crf_inference_label(img, labels, n_labels, t=10, gt_prob=0.7):
        h, w = img.shape[:2]
        d = dcrf.DenseCRF2D(w, h, n_labels)
        d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(img)), compat=10)
        q = d.inference(t)
        return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)

    keys = np.pad(np.asarray(keys), (1, 0), mode="constant")  # IRNet: keys + 1 (0-based ids); ours are 1-based
    fg_cam = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=fg), axis=0)
    fg_conf = keys[crf_inference_label(image, fg_cam, keys.shape[0])]
    bg_cam = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=bg), axis=0)
    bg_conf = keys[crf_inference_label(image, bg_cam, keys.shape[0])]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf.astype(np.uint8)


def blob_scene(h=36, w=44, seed=0):
    """An image with two coloured objects and smooth CAMs that overshoot their borders."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 90, np.uint8)
    image[6:20, 5:18] = (220, 40, 40)
    image[18:32, 24:40] = (40, 200, 60)
    image = np.clip(image.astype(int) + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cam_a = np.exp(-(((yy - 13) / 8.0) ** 2 + ((xx - 11) / 8.0) ** 2))
    cam_b = np.exp(-(((yy - 25) / 9.0) ** 2 + ((xx - 32) / 10.0) ** 2))
    cams = np.stack([cam_a, cam_b]).astype(np.float32)
    cams /= cams.max(axis=(1, 2), keepdims=True) + 1e-5
    return image, cams


def test_threshold_labels_equal_padded_argmax_with_ties():
    rng = np.random.default_rng(0)
    cams = rng.choice(np.float32([0.0, 0.05, 0.1, 0.3, 0.5, 0.9]), size=(3, 9, 11))
    for t in (0.05, 0.3, 0.5):
        expected = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=t), axis=0)
        np.testing.assert_array_equal(threshold_labels(cams, t), expected)
    assert threshold_labels(np.zeros((0, 4, 5), np.float32), 0.3).shape == (4, 5)


def test_combine_matches_irnet_formula():
    rng = np.random.default_rng(1)
    fg = rng.choice([0, 2, 5], size=(20, 20))
    bg = rng.choice([0, 2, 5], size=(20, 20))
    conf = fg.copy()
    conf[fg == 0] = 255
    conf[bg + fg == 0] = 0
    np.testing.assert_array_equal(combine_confidence(fg, bg), conf)


def test_eq1_without_crf_by_hand():
    cams = np.array([[[0.9, 0.31, 0.30, 0.2, 0.05, 0.0]], [[0.1, 0.5, 0.0, 0.0, 0.0, 0.06]]], np.float32)
    seed = make_seed(None, cams, [2, 3], crf=None)
    # >0.30 -> argmax class; <=0.05 everywhere -> background; otherwise unsure (a tie at 0.30 is not 'above')
    np.testing.assert_array_equal(seed, [[2, 3, 255, 255, 0, 255]])
    assert seed.dtype == np.uint8


def test_with_crf_equals_irnet_reference():
    image, cams = blob_scene()
    ours = make_seed(image, cams, [1, 3], 0.30, 0.05, CRFConfig())
    np.testing.assert_array_equal(ours, irnet_reference(image, cams, [1, 3]))
    assert set(np.unique(ours)) <= {0, 1, 3, 255} and {0, 1, 3} <= set(np.unique(ours))
    # the CRF pulls the seeds to the object colours: class 1 seed lies inside the red square mostly
    red = np.zeros(ours.shape, bool)
    red[6:20, 5:18] = True
    assert red[ours == 1].mean() > 0.9


def test_no_present_class_gives_background():
    image, _ = blob_scene()
    seed = make_seed(image, np.zeros((0, *image.shape[:2]), np.float32), [], crf=CRFConfig())
    assert (seed == 0).all()


def make_dataset_with_cams(root: Path, n: int = 3, with_masks: bool = True):
    """A small VOC-layout dataset, its CAM shard (stage 'cam') and the ground-truth masks."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    truth = {}
    cams_by_id = {}
    for i in range(n):
        image, cams = blob_scene(seed=i)
        image_id = f"img{i}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        gt = np.zeros(image.shape[:2], np.uint8)
        gt[6:20, 5:18] = 1
        gt[18:32, 24:40] = 3
        gt[0, :] = 255
        if with_masks:
            save_label_png(gt, root / "SegmentationClass" / f"{image_id}.png")
        truth[image_id] = gt
        cams_by_id[image_id] = (cams, [1, 3]) if i < n - 1 else (cams[:0], [])  # last: no class present
    ids = list(truth)
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return truth, cams_by_id


def write_cam_shards(path_list, cams_by_id, stage="cam"):
    ids = list(cams_by_id)
    chunks = np.array_split(np.arange(len(ids)), len(path_list))
    for path, chunk in zip(path_list, chunks):
        with ArtifactWriter(path, stage=stage, config={"test": True}) as w:
            for k in chunk:
                cams, keys = cams_by_id[ids[k]]
                w.add(ids[k], {"cam": cams}, {"class_keys": np.asarray(keys, np.int64),
                                              "size": np.asarray(cams.shape[1:]), "stride": 4})


def spec_params(root: Path) -> dict:
    return {"root": str(root), "classes": list(CLASSES), "image_ext": ".png"}


def test_stage_writes_seed_shard(tmp_path):
    root = tmp_path / "data"
    _, cams_by_id = make_dataset_with_cams(root)
    cam_path = tmp_path / "cam" / "1-of-1.h5"
    write_cam_shards([cam_path], cams_by_id)
    out = tmp_path / "seeds" / "1-of-1.h5"
    params = {"dataset": spec_params(root), "fg_threshold": 0.3, "bg_threshold": 0.05,
              "crf": {"enabled": True, "iterations": 10}}
    assert run_stage("make_seeds", params, {"cam": str(cam_path)}, {"seeds": str(out)}) == 3
    reader = ArtifactReader(out, expect_stage="seeds")
    assert reader.ids() == ["img0", "img1", "img2"]
    assert reader.attrs["fg_threshold"] == 0.3 and reader.attrs["crf"]["enabled"] is True
    image = np.asarray(Image.open(root / "JPEGImages" / "img0.png"))
    cams, keys = cams_by_id["img0"]
    seed = reader.read("img0", "seed")
    assert seed.dtype == np.uint8 and seed.shape == image.shape[:2]
    np.testing.assert_array_equal(seed, irnet_reference(image, cams, keys))
    assert reader.image_attrs("img0")["class_keys"] == [1, 3]
    assert (reader.read("img2", "seed") == 0).all()
    # CRF off: the plain Eq. (1) labels, no image needed
    params["crf"] = {"enabled": False}
    run_stage("make_seeds", params, {"cam": str(cam_path)}, {"seeds": str(out)})
    np.testing.assert_array_equal(ArtifactReader(out).read("img0", "seed"), make_seed(None, cams, keys, crf=None))


def test_stage_errors(tmp_path):
    root = tmp_path / "data"
    _, cams_by_id = make_dataset_with_cams(root, n=2)
    cams, keys = cams_by_id["img0"]
    cams_by_id["img0"] = (cams[:, :-2], keys)  # CAM smaller than the image
    cam_path = tmp_path / "cam.h5"
    write_cam_shards([cam_path], cams_by_id)
    out = tmp_path / "seeds.h5"
    with pytest.raises(DataError, match=r"img0.png: image size \(36, 44\) differs from its CAM"):
        run_stage("make_seeds", {"dataset": spec_params(root)}, {"cam": str(cam_path)}, {"seeds": str(out)})
    assert not out.exists()  # atomic: nothing half-written
    with pytest.raises(ConfigError, match="bg_threshold <= fg_threshold"):
        run_stage("make_seeds", {"dataset": spec_params(root), "bg_threshold": 0.5}, {}, {})
    with pytest.raises(ConfigError, match="unknown key"):
        run_stage("make_seeds", {"dataset": spec_params(root), "crf": {"sxy": 3}}, {}, {})


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table ({} when nothing is to be done)."""
    jobs: dict[str, int] = {}
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return jobs
    for line in lines[lines.index("Job stats:") + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.slow
@pytest.mark.workflow
def test_param_changes_rerun_only_the_stages_that_read_them(workdir, tiny_config, tmp_path):
    """Run the tiny pipeline up to the CAM/seed evaluations, then edit a config copy and dry-run."""
    import yaml

    from conftest import run_snakemake

    targets = ["results/tiny/eval/seeds.json", "results/tiny/eval/cam.json"]
    run_snakemake(workdir, "--configfile", str(tiny_config), "--cores", "2", *targets)

    def merge(base: dict, change: dict) -> dict:
        out = dict(base)
        for key, value in change.items():
            out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return out

    tiny = yaml.safe_load(tiny_config.read_text())

    def planned(change: dict) -> dict[str, int]:
        path = tmp_path / "edited.yaml"  # an edited copy of the tiny config
        path.write_text(yaml.safe_dump(merge(tiny, change)))
        proc = run_snakemake(workdir, "-n", *targets, "--configfile", str(path))
        return planned_jobs(proc.stdout + proc.stderr)

    assert planned({}) == {}
    cams_and_seeds = {"extract_cams": 2, "evaluate_cams": 1, "make_seeds": 2, "evaluate_seeds": 1}
    assert planned({"cam": {"scales": [1.0]}}) == cams_and_seeds
    seeds_only = {"make_seeds": 2, "evaluate_seeds": 1}
    assert planned({"seeds": {"fg_threshold": 0.4, "bg_threshold": 0.1}}) == seeds_only
    assert planned({"seeds": {"crf": {"iterations": 5}}}) == seeds_only
    assert planned({"evaluation": {"cam_thresholds": [0.1, 0.2]}}) == {"evaluate_cams": 1}
