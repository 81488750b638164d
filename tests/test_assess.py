"""``synthdet.detectors.assess``: verdicts in words, stability checks, uncertainty band, evidence and heatmap, on real images,
real codecs and real forward passes of the shipped default detector."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_image, synthetic_photo, write_image
from PIL import Image
from typer.testing import CliRunner

from synthdet.data.perturbations import get_slice
from synthdet.detectors.assess import (
    CHECKS,
    assess_image,
    assess_images,
    assessment_images,
    centre_crop,
    check_names,
    prepare,
    tile_boxes,
)
from synthdet.detectors.detector import Detector
from synthdet.detectors.evidence import jpeg_quality, read_evidence
from synthdet.detectors.scoring import score_images
from synthdet.io.pixels import ImageLoadError

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


@pytest.fixture(scope="module")
def det(default_detector: Detector) -> Detector:
    return default_detector


def with_card(det: Detector, **updates) -> Detector:
    """The same head and backbone under a changed card (threshold, data): a real detector, not a mock."""
    card = det.card.model_copy(deep=True, update=updates)
    return Detector(card, det.head, det.backbone)


def test_jpeg_quality_recovers_every_ijg_quality() -> None:
    for q in range(1, 101):
        with Image.open(io.BytesIO(encode_image(synthetic_photo(32, 32), "JPEG", quality=q))) as img:
            est = jpeg_quality(img.quantization)
        assert est is not None and est.quality == q and est.standard, (q, est)


def test_jpeg_quality_flags_custom_tables() -> None:
    buf = io.BytesIO()
    synthetic_photo(32, 32).save(buf, format="JPEG", qtables=[[3] * 64, [5] * 64])  # a camera's own tables
    with Image.open(buf) as img:
        assert img.quantization[0][0] == 3
        est = jpeg_quality(img.quantization)
    assert est is not None and not est.standard and est.mean_abs_diff > 0
    assert jpeg_quality({}) is None


def test_evidence_reads_exif_and_is_not_in_the_score(det: Detector) -> None:
    img = synthetic_photo(96, 72, seed=3)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon\x00", "EOS 5D", "GIMP 2.10"
    with_exif = encode_image(img, "JPEG", quality=85, exif=exif.tobytes())
    plain = encode_image(img, "JPEG", quality=85)
    ev = read_evidence(with_exif)
    assert (ev.format, ev.exif.make, ev.exif.model, ev.exif.software) == ("JPEG", "Canon", "EOS 5D", "GIMP 2.10")
    assert ev.jpeg is not None and ev.jpeg.quality == 85 and ev.jpeg.standard
    assert read_evidence(plain).exif.make is None
    a, b = assess_images(det, [with_exif, plain])
    assert not isinstance(a, ImageLoadError) and not isinstance(b, ImageLoadError)
    assert a.probability == pytest.approx(b.probability, abs=1e-6)  # evidence never moves the score
    png = read_evidence(encode_image(img, "PNG"))
    assert png.format == "PNG" and png.jpeg is None


def test_c2pa_absent_or_not_checked() -> None:
    c2pa = read_evidence(encode_image(synthetic_photo(), "JPEG")).c2pa
    try:
        import c2pa as _  # noqa: F401
    except ModuleNotFoundError:
        assert c2pa.status == "not-checked" and "c2pa-python" in c2pa.detail
    else:
        assert c2pa.status == "absent"


def c2pa_signed_jpeg(img: Image.Image, source_type: str) -> bytes:
    """``img`` as a JPEG carrying a real, signed C2PA manifest (a throwaway CA and ES256 signer) whose action says
    how it was made."""
    import datetime

    c2pa = pytest.importorskip("c2pa")
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key, issuer: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthdet tests")])
        usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        usage.update({"key_cert_sign": ca, "crl_sign": ca, "digital_signature": not ca})
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(**usage), critical=True))
        if not ca:
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                critical=False))
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("test CA", ca_key, None, ca_key, True)
    leaf = cert("test signer", key, ca.subject, ca_key, False)
    pem = serialization.Encoding.PEM
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(
        alg="es256", sign_cert=leaf.public_bytes(pem) + ca.public_bytes(pem), ta_url=None,
        private_key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))
    manifest = {"claim_generator_info": [{"name": "synthdet-test", "version": "1"}], "title": "made.jpg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created",
                    "digitalSourceType": f"http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}"}]}}]}
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, "image/jpeg", io.BytesIO(encode_image(img, "JPEG")), out)
    return out.getvalue()


def test_c2pa_manifest_is_evidence_not_score(det: Detector) -> None:
    img = synthetic_photo(96, 72, seed=8)
    signed = c2pa_signed_jpeg(img, "trainedAlgorithmicMedia")
    ev = read_evidence(signed).c2pa
    assert (ev.status, ev.issuer, ev.digital_source_types) == ("present", "synthdet tests", ["trainedAlgorithmicMedia"])
    assert ev.claim_generator is not None and ev.claim_generator.startswith("synthdet-test 1")
    assert ev.validation_state in ("Valid", "Trusted")
    assert any("trainedAlgorithmicMedia" in n for n in read_evidence(signed).notes)
    a, b = assess_images(det, [signed, encode_image(img, "JPEG")])
    assert not isinstance(a, ImageLoadError) and not isinstance(b, ImageLoadError)
    assert a.probability == pytest.approx(b.probability, abs=1e-6)  # credentials never move the score
    tampered = bytearray(signed)
    tampered[-100] ^= 0x55  # one byte of the pixel data changed after signing
    broken = read_evidence(bytes(tampered)).c2pa
    assert broken.status == "present" and broken.validation_state == "Invalid"


def test_scores_match_predict_paths(det: Detector, tmp_path: Path) -> None:
    """The assessment's numbers are the detector's: the image as predict_paths scores the file, each check as
    predict_paths scores it under the same transform."""
    path = write_image(tmp_path / "a.jpg", synthetic_photo(120, 90, seed=7))
    a = assess_image(det, path, checks="full")
    ((_, p, _),) = det.predict_paths([path], num_workers=0)
    assert a.probability == pytest.approx(p, abs=1e-5)
    quick = assess_image(det, path)  # the default: one re-shared copy
    assert [c.name for c in quick.checks] == ["reshare"] and quick.probability == pytest.approx(a.probability, abs=1e-6)
    for check in a.checks + quick.checks:
        ((_, q, _),) = det.predict_paths([path], num_workers=0, transform=CHECKS[check.name][1])
        assert check.probability == pytest.approx(q, abs=1e-5), check.name
    assert [c.name for c in a.checks] == ["jpeg75", "resize0.5", "crop"]
    assert a.checks[0].description == get_slice("jpeg75").description
    assert det.assess(path).probability == quick.probability  # the Detector method is the same function


def test_check_sets_cost_one_pass_per_check(det: Detector) -> None:
    """quick scores one copy more, full three, off none (each is a forward pass); the re-shared copy applies the
    full set's three steps in order, pixel for pixel; an unknown setting is refused by name."""
    img = synthetic_photo(200, 150, seed=3)
    data = encode_image(img, "JPEG")
    sizes = {c: len(prepare(det, data, checks=c, evidence=False).images) for c in ("quick", "full", "off")}
    assert sizes == {"quick": 2, "full": 4, "off": 1}
    assert [len(prepare(det, data, checks=b, evidence=False).images) for b in (True, False)] == [2, 1]
    for c in ("quick", "full"):  # what the service weighs a request by, before decoding, is what prepare builds
        assert assessment_images(c, True) == len(prepare(det, data, checks=c, heatmap=True, evidence=False).images)
    chained = CHECKS["jpeg75"][1](CHECKS["resize0.5"][1](CHECKS["crop"][1](img, "k"), "k"), "k")
    assert np.array_equal(np.asarray(CHECKS["reshare"][1](img, "k")), np.asarray(chained))
    assert not np.array_equal(np.asarray(CHECKS["reshare"][1](img, "k")), np.asarray(CHECKS["crop"][1](img, "k")))
    with pytest.raises(ValueError, match="quick, full, off"):
        check_names("some")


def test_band_from_card_or_default(det: Detector) -> None:
    data = encode_image(synthetic_photo(seed=1), "JPEG")
    assert assess_image(det, data, evidence=False).band_source == ("card" if "uncertain_band" in det.card.data
                                                                    else "default, not calibrated")
    det = with_card(det, data={k: v for k, v in det.card.data.items() if k != "uncertain_band"})
    a = assess_image(det, data, evidence=False, checks=False)  # the band speaks alone: no check may disagree
    assert a.band_source == "default, not calibrated"
    assert a.band == pytest.approx((max(0.0, det.threshold - 0.1), min(1.0, det.threshold + 0.1)))
    assert "band: default, not calibrated" in " ".join(a.reasons)
    p = a.probability
    inside = with_card(det, data={**det.card.data, "uncertain_band": [max(0.0, p - 0.01), min(1.0, p + 0.01)]})
    b = assess_image(inside, data, evidence=False)
    assert b.band_source == "card" and b.verdict == "uncertain"
    assert any("uncertainty band" in r for r in b.reasons)
    far = [1.0, 1.0] if p < 0.5 else [0.0, 0.0]
    outside = with_card(det, threshold=0.999 if p < 0.5 else 0.001, data={**det.card.data, "uncertain_band": far})
    c = assess_image(outside, data, evidence=False)
    if all(ch.agrees for ch in c.checks):
        assert c.verdict == ("likely real" if p < 0.5 else "likely generated")
    with pytest.raises(ValueError, match="uncertain_band"):
        assess_image(with_card(det, data={"uncertain_band": [0.7, 0.2]}), data)


def test_disagreeing_check_makes_it_uncertain(det: Detector) -> None:
    """A threshold between the image's score and one check's score: the verdict must not be confident."""
    data = encode_image(synthetic_photo(160, 120, seed=11), "PNG")
    a = assess_image(det, data, evidence=False)
    check = max(a.checks, key=lambda c: abs(c.probability - a.probability))
    assert abs(check.probability - a.probability) > 1e-4, "need a check that moves the score"
    t = (check.probability + a.probability) / 2
    tight = with_card(det, threshold=t, data={"uncertain_band": [t, t]})
    b = assess_image(tight, data, evidence=False)
    assert b.verdict == "uncertain"
    assert not next(c for c in b.checks if c.name == check.name).agrees
    assert any(check.name in r and "says" in r for r in b.reasons)


def test_heatmap_tiles_are_scored_crops(det: Detector) -> None:
    img = synthetic_photo(150, 100, seed=5)
    a = assess_image(det, img, heatmap=True, checks=False)
    assert a.heatmap is not None and a.evidence is None and a.checks == []
    scores, boxes = np.array(a.heatmap.scores), a.heatmap.boxes
    assert scores.shape == (3, 3)
    assert boxes[0][0] == (0, 0, 50, 50) and boxes[2][2] == (100, 50, 150, 100)
    expected = score_images(det, [img.crop(boxes[1][2])])[0]
    assert scores[1, 2] == pytest.approx(expected, abs=1e-5)
    assert tile_boxes((10, 10), 1) == [[(2, 2, 7, 7)]]  # one tile: centred


def test_centre_crop_keeps_the_middle() -> None:
    img = Image.new("RGB", (100, 50))
    img.paste((255, 0, 0), (15, 7, 85, 43))
    out = centre_crop(img)
    assert out.size == (70, 35) and out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((69, 34)) == (255, 0, 0)


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty-file"), (b"hello, not an image", "not-an-image"),
                                              (encode_image(synthetic_photo(), "JPEG")[:300], "truncated")])
def test_bad_inputs_give_reasons(det: Detector, data: bytes, reason: str) -> None:
    with pytest.raises(ImageLoadError) as e:
        assess_image(det, data)
    assert e.value.reason == reason
    out = assess_images(det, [data, encode_image(synthetic_photo(), "PNG")])
    assert isinstance(out[0], ImageLoadError) and not isinstance(out[1], ImageLoadError)


def test_cli_predict_assess(tmp_path: Path) -> None:
    from synthdet.cli import app

    path = write_image(tmp_path / "p.jpg", synthetic_photo(96, 72, seed=2))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--assess", "--json", str(path), str(bad)])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 1 and rows[0]["verdict"] in ("likely generated", "likely real", "uncertain")
    assert [c["name"] for c in rows[0]["checks"]] == ["reshare"]
    human = runner.invoke(app, ["predict", "--assess", "--checks", "full", str(path)])
    assert human.exit_code == 0 and "check jpeg75" in human.stdout and "evidence (not in the score)" in human.stdout
    assert runner.invoke(app, ["predict", "--checks", "full", str(path)]).exit_code == 2  # needs --assess
    wrong = runner.invoke(app, ["predict", "--assess", "--checks", "most", str(path)])
    assert wrong.exit_code == 2 and "quick, full, off" in wrong.output
    assert runner.invoke(app, ["predict", "--assess", str(bad)]).exit_code == 1
    assert runner.invoke(app, ["predict", "--assess", str(path), "-o", str(tmp_path / "x.csv")]).exit_code == 2


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_DEV.is_dir(), reason="needs ../shared/data/dev")
def test_real_photos_from_shared(det: Detector) -> None:
    photos = sorted((SHARED_DEV / "real").glob("*.JPEG"))[:2] + sorted((SHARED_DEV / "fake").glob("*.png"))[:1]
    out = assess_images(det, photos, heatmap=True)
    for path, a in zip(photos, out):
        assert not isinstance(a, ImageLoadError)
        ((_, p, _),) = det.predict_paths([path], num_workers=0)
        assert a.probability == pytest.approx(p, abs=1e-5)
        assert a.evidence is not None and a.evidence.format == ("PNG" if path.suffix == ".png" else "JPEG")
        assert a.heatmap is not None and np.array(a.heatmap.scores).shape == (3, 3)
        assert a.verdict == "uncertain" or all(c.agrees for c in a.checks)


def test_score_images_ensemble_and_native_scale(det: Detector, tmp_path: Path) -> None:
    """Decoded images score as their files do through predict_paths: for an ensemble (members combined by its
    rule) and for a native-scale backbone (inputs of different sizes, forwarded in groups of one shape)."""
    from synthdet.backbones.base import create_backbone
    from synthdet.detectors.card import default_detector_path
    from synthdet.detectors.ensemble import EnsembleDetector
    from synthdet.io.pixels import Preprocess

    imgs = [synthetic_photo(300, 200, seed=1), synthetic_photo(120, 90, seed=2), synthetic_photo(150, 150, seed=3)]
    paths = [write_image(tmp_path / f"{i}.png", im) for i, im in enumerate(imgs)]
    ens = EnsembleDetector.from_members([default_detector_path(), default_detector_path()], rule="majority")
    expected = [p for _, p, _ in ens.predict_paths(paths, num_workers=0)]
    assert score_images(ens, imgs) == pytest.approx(expected, abs=1e-5)
    pre = Preprocess(**{**det.card.preprocess.model_dump(), "scale": "native"})
    native = Detector(det.card.model_copy(update={"preprocess": pre}), det.head,
                      create_backbone(det.card.backbone, preprocess=pre, tap_pool=det.card.tap_pool, device="cpu"))
    expected = [p for _, p, _ in native.predict_paths(paths, num_workers=0, batch_size=1)]  # one size per forward
    assert score_images(native, imgs, batch_size=2) == pytest.approx(expected, abs=1e-5)


def test_mutated_files_never_crash(det: Detector) -> None:
    """Hostile bytes: 40 random corruptions of a JPEG with EXIF (header, EXIF block, pixel data) and a PNG each
    give an assessment or an ImageLoadError with a reason, nothing else."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0131] = "Nikon", "Lightroom"
    seeds = [encode_image(synthetic_photo(64, 48, seed=6), "JPEG", exif=exif.tobytes()),
             encode_image(synthetic_photo(64, 48, seed=6), "PNG")]
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(40):
        data = bytearray(seeds[i % 2])
        for pos in rng.integers(2, min(len(data), 400 if i % 3 else len(data)), size=int(rng.integers(1, 6))):
            data[pos] = int(rng.integers(0, 256))
        (result,) = assess_images(det, [bytes(data)], checks=False)
        outcomes["refused" if isinstance(result, ImageLoadError) else "ok"] += 1
        if isinstance(result, ImageLoadError):
            assert result.reason in ("not-an-image", "truncated", "corrupt", "too-large"), result
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes


def test_a_huge_small_file_costs_its_checks_and_heatmap_what_a_photo_costs(
    default_detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 60 KB paletted PNG of 8000×6000: the checks and patch tiles are cut from the one bounded copy scoring makes
    anyway, never from 48 Mpx (a JPEG re-encode and crops of that took seconds and gigabytes); the tiles' boxes are
    still given in the upload's own pixels, and the image's own score is the plain score's."""
    from synthdet.detectors.scoring import draft_size

    big = Image.new("P", (8000, 6000), 7)
    big.putpalette([(i * 37) % 256 for i in range(768)])
    data = encode_image(big, "PNG", optimize=True)
    assert len(data) < 200_000
    seen: list[tuple[int, int]] = []  # the size each check is applied to
    import synthdet.detectors.assess as assess_module

    for name, (text, fn) in list(CHECKS.items()):
        monkeypatch.setitem(assess_module.CHECKS, name,
                            (text, lambda im, key, fn=fn: seen.append(im.size) or fn(im, key)))
    pending = prepare(default_detector, data, checks="full", heatmap=True)
    assert len(seen) == 3 and all(min(size) < 2 * 768 for size in seen), seen  # never the 48 Mpx
    limit = 2 * (draft_size(default_detector) or 1024)
    assert len(pending.images) == 1 + 3 + 9
    assert all(min(im.size) < limit for im in pending.images), [im.size for im in pending.images]
    boxes = [b for row in pending.boxes for b in row]
    assert max(b[2] for b in boxes) == 8000 and max(b[3] for b in boxes) == 6000 and min(b[0] for b in boxes) == 0
    (tmp_path / "big.png").write_bytes(data)
    ((_, plain, _),) = default_detector.predict_paths([tmp_path / "big.png"], num_workers=0)
    assert assess_image(default_detector, data, checks=True).probability == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize(("make", "model", "camera"), [
    ("Canon", "Canon EOS 5D Mark IV", "Canon EOS 5D Mark IV"),
    ("NIKON CORPORATION", "NIKON D3X", "NIKON D3X"),
    ("Apple", "iPhone 13 mini", "Apple iPhone 13 mini"),
    (None, "DSC-RX100", "DSC-RX100"),
    (None, None, None),
])
def test_the_camera_is_named_with_its_brand_once(make: str | None, model: str | None, camera: str | None) -> None:
    """Evidence read from real EXIF bytes names the camera as people do, not "camera Canon Canon EOS …"."""
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    data = encode_image(synthetic_photo(48, 32), "JPEG", exif=exif)
    assert read_evidence(data).exif.camera == camera


def test_passes_group_sizes_across_requests_within_a_pixel_bound(det: Detector,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The images of several requests (an image and its checks each) are scored in passes sorted by size, never over
    ``CPU_PASS_PIXELS``, with the numbers a plain ``score_images`` gives, in order."""
    import synthdet.features.extract as extract
    from synthdet.detectors.assess import CPU_PASS_PIXELS, score_in_passes

    passes: list[list[tuple[int, ...]]] = []
    real = extract.forward_by_shape
    monkeypatch.setattr(extract, "forward_by_shape",
                        lambda bb, tensors, **k: passes.append([tuple(t.shape) for t in tensors]) or real(bb, tensors, **k))
    sizes = [(500, 375), (160, 120), (500, 375), (160, 120), (900, 700)]
    requests = [prepare(det, encode_image(synthetic_photo(w, h, seed=i), "JPEG"), checks=True)
                for i, (w, h) in enumerate(sizes)]
    images = [im for p in requests for im in p.images]
    grouped = score_in_passes(det, images)
    assert all(sum(s[1] * s[2] for s in shapes) <= CPU_PASS_PIXELS for shapes in passes), passes
    assert any(len(shapes) > 4 for shapes in passes)  # the small images of two requests (and their checks) share one
    passes.clear()
    plain = score_images(det, images)
    assert np.abs(grouped - plain).max() < 1e-5
