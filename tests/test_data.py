"""Data sources on real images, decoding of awkward files, and every bad-input case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlpipe.data import open_source
from dlpipe.data.builtin import BUILTINS
from dlpipe.data.decode import BadImage, decode
from dlpipe.errors import BadInput

from .conftest import parse_json


def test_mnist5k_is_real_mnist():
    ds = open_source("mnist5k")
    assert len(ds) == 5000 and ds.class_names == [str(i) for i in range(10)]
    assert np.bincount(ds.labels).min() > 400  # every digit present
    img = np.asarray(ds.image(0))
    assert img.shape == (28, 28) and img.dtype == np.uint8
    assert img.max() > 200 and (img == 0).mean() > 0.5  # white strokes on black


def test_digits_builtin():
    ds = open_source("digits")
    assert len(ds) == 1797 and ds.image_size() == (8, 8) and ds.mode == "L"


@pytest.mark.skipif(
    not BUILTINS["fashion-mnist"].present(None), reason="fashion-mnist not installed"
)
def test_fashion_mnist_with_official_split():
    ds = open_source("fashion-mnist")
    assert len(ds) == 70000 and ds.official_test.sum() == 10000
    assert ds.class_names[9] == "Ankle_boot"


def test_fashion_mnist_missing_root_is_environment_error(tmp_path):
    from dlpipe.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match="expected the four idx files"):
        open_source("fashion-mnist", data_root=tmp_path)


def test_image_folder_classes_in_order(image_folder):
    ds = open_source(image_folder)
    assert ds.kind == "imagefolder" and ds.class_names == ["bird", "cat", "dog"]
    assert len(ds) == 18 and ds.mode == "RGB"
    # the label follows the folder: 'dog' (label 2) was drawn green-dominant, 'bird' blue
    dog = np.asarray(ds.image(int(np.flatnonzero(ds.labels == 2)[0])))
    bird = np.asarray(ds.image(int(np.flatnonzero(ds.labels == 0)[0])))
    assert dog[..., 1].mean() > dog[..., 0].mean() + 100
    assert bird[..., 2].mean() > bird[..., 1].mean() + 100


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    ds = open_source(tmp_path)
    assert ds.kind == "flat" and not ds.labeled and (ds.labels == -1).all()
    with pytest.raises(BadInput, match="at least 2"):
        ds.require_classes(2)


def _bad_files(folder: Path) -> None:
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.txt").write_text("hello")
    (folder / "fake.jpg").write_bytes(b"this is not a jpeg at all")
    good = folder / "trunc_src.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])


def test_bad_files_are_skipped_and_listed(image_folder):
    """Opening reads headers only: files whose header is bad are skipped at once, a file whose
    header is fine but whose pixels are cut is found (and listed) when decoded."""
    from dlpipe.data import Preprocess
    from dlpipe.data.arrays import pixels_and_indices

    _bad_files(image_folder / "cat")
    ds = open_source(image_folder)
    assert len(ds) == 19  # 18 good + truncated.png, whose header reads fine
    reasons = {Path(f).name: why for f, why in ds.skipped}
    assert set(reasons) == {"zero.png", "notes.txt", "fake.jpg"}
    pre = Preprocess(resize=8, crop=8, channels=3)
    px, kept = pixels_and_indices(ds, np.arange(len(ds)), pre)
    assert len(px) == len(kept) == 18
    assert "truncated.png" not in {ds.paths[i].name for i in kept}
    reasons = {Path(f).name: why for f, why in ds.skipped}
    assert set(reasons) == {"zero.png", "notes.txt", "fake.jpg", "truncated.png"}
    assert "zero-byte" in reasons["zero.png"] and "truncated" in reasons["truncated.png"]


def test_strict_makes_bad_files_fatal(image_folder):
    from dlpipe.data import Preprocess
    from dlpipe.data.arrays import pixels_of

    _bad_files(image_folder / "dog")
    with pytest.raises(BadInput, match="--strict: 3 unusable"):
        open_source(image_folder, strict=True)
    (image_folder / "dog" / "zero.png").unlink()
    (image_folder / "dog" / "notes.txt").unlink()
    (image_folder / "dog" / "fake.jpg").unlink()
    ds = open_source(image_folder, strict=True)  # the header of truncated.png is fine...
    with pytest.raises(BadInput, match="--strict: 1 image.*truncated.png"):
        pixels_of(ds, np.arange(len(ds)), Preprocess(resize=8, crop=8, channels=3))


@pytest.mark.parametrize(
    "case",
    ["missing", "file", "empty", "empty_class", "only_bad"],
)
def test_unusable_sources_name_the_path(tmp_path, case):
    target = tmp_path / "data"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    elif case == "empty_class":
        (target / "a").mkdir(parents=True)
        (target / "b").mkdir()
        Image.new("L", (4, 4)).save(target / "a" / "x.png")
    elif case == "only_bad":
        target.mkdir()
        (target / "x.png").write_bytes(b"")
    with pytest.raises(BadInput) as err:
        open_source(target)
    assert str(target) in err.value.paragraph() or "'" + str(target) in err.value.paragraph()


def test_symlink_loop_terminates(tmp_path):
    root = tmp_path / "loop"
    (root / "a").mkdir(parents=True)
    Image.new("L", (4, 4), 9).save(root / "a" / "x.png")
    os.symlink(root / "a", root / "a" / "again")
    (root / "b").mkdir()
    Image.new("L", (4, 4), 99).save(root / "b" / "y.png")
    ds = open_source(root)
    assert len(ds) == 2


def test_non_ascii_and_spaces_in_class_names(tmp_path):
    for name in ["chat noir", "café"]:
        (tmp_path / "d" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "d" / name / "a b.png")
    ds = open_source(tmp_path / "d")
    assert ds.class_names == ["café", "chat noir"]


# ---- decoding awkward but valid images --------------------------------------------------------


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 32768
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = np.asarray(decode(tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out[1, 1] == 255 and out[0, 0] == 128


def test_palette_cmyk_rgba_and_gray_convert(tmp_path):
    Image.new("P", (4, 4), 3).save(tmp_path / "p.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert decode(tmp_path / "p.png").mode == "RGB"
    red = np.asarray(decode(tmp_path / "c.jpg"))
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60
    # fully transparent pixels become black, not the hidden red
    assert np.asarray(decode(tmp_path / "t.png")).max() == 0
    assert decode(tmp_path / "p.png", "L").mode == "L"


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("L", (4, 4), v) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(decode(tmp_path / "a.gif")).mean() == pytest.approx(10, abs=1)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (6, 2), 0)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode(tmp_path / "r.jpg").size == (2, 6)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    # 10000 x 10000 one-bit PNG: tiny on disk, 100 Mpx when decoded
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(tmp_path / "bomb.png")


# ---- CLI ---------------------------------------------------------------------------------------


def test_data_list_json_tells_the_truth(cli):
    result = cli("data", "list", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in parse_json(result.stdout)["datasets"]}
    assert rows["mnist5k"]["present"] is True and rows["digits"]["present"] is True
    assert rows["fashion-mnist"]["present"] == Path("/usr/share/datasets/fashion-mnist").is_dir()


def test_data_export_writes_an_image_folder_that_loads_back(cli, tmp_path):
    out = tmp_path / "digits_png"
    result = cli("data", "export", "digits", out, "--limit", "50", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert parse_json(result.stdout)["images"] == 50
    ds = open_source(out)
    assert len(ds) == 50 and ds.class_names == [str(i) for i in range(10)]
    again = cli("data", "export", "digits", out)
    assert again.exit_code == 2 and "not empty" in again.stderr


def test_cli_bad_data_path_is_one_paragraph_exit_2(cli, tmp_path):
    result = cli("data", "export", "nope", tmp_path / "x")
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.output


def test_dataloader_workers_decode_the_same_pixels_in_order(image_folder):
    """Worker processes (a forked torch DataLoader) decode an ImageFolder to exactly the pixels,
    in exactly the order, that the main process decodes alone."""
    from dlpipe.data import Preprocess
    from dlpipe.data.arrays import decode_workers, pixels_of

    ds = open_source(str(image_folder))
    pre = Preprocess(resize=12, crop=12, mean=[0.5] * 3, std=[0.5] * 3, channels=3)
    idx = np.arange(len(ds))[::-1].copy()
    seen: list[int] = []
    serial = pixels_of(ds, idx, pre)
    parallel = pixels_of(ds, idx, pre, progress=seen.append, workers=2)
    assert parallel.shape == (len(ds), 3, 12, 12) and np.array_equal(serial, parallel)
    assert sum(seen) == len(ds)
    assert decode_workers(100) == 0  # small sets (and 2-core machines) decode in-process
