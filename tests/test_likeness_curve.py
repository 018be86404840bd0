"""Which step looks most like the person: the grid's measures on real faces, the recommendation
rule and the overfitting warning on metrics rows made here, and curves.png by its pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

from engine.prep.identity import Identity, best_face
from engine.training.checkpoints import checkpoints_to_delete
from engine.training.curves import draw_curves
from engine.training.recommend import THRESHOLDS, Recommendation, best_likeness, overfitting, recommend
from engine.training.sample_measures import TrainingPhotos, measure_grid

ASTRONAUT = Image.fromarray(data.astronaut())


def portrait(box: tuple[int, int, int, int], mirror: bool = False, colour: float = 1.0) -> Image.Image:
    """The astronaut framed as one photo of a library: a crop, maybe mirrored, maybe recoloured."""
    image = ASTRONAUT.crop(box).resize((256, 256), Image.Resampling.LANCZOS)
    image = ImageOps.mirror(image) if mirror else image
    return ImageEnhance.Color(image).enhance(colour)


def stranger(k: int) -> Image.Image:
    """Another person: a face from scikit-image's Labeled Faces in the Wild subset."""
    pixels = (data.lfw_subset()[k] * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((256, 256), Image.Resampling.LANCZOS).convert("RGB")


def noise(seed: int) -> Image.Image:
    """What the tiny model draws: no face, nothing like a photo."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def person():
    """The astronaut's identity and two training photos of them."""
    photos = [portrait((100, 0, 400, 300)), portrait((60, 0, 460, 400))]
    encodings = [best_face(Identity(centroid=[0.0] * 128, tolerance=0.6, photos=1, source="reference"), p)[1]
                 for p in photos]
    identity = Identity(centroid=list(np.mean(encodings, axis=0)), tolerance=0.6, photos=2, source="reference")
    return identity, TrainingPhotos.from_images(["a.png", "b.png"], photos, identity)


def test_a_reproduced_training_photo_scores_as_a_copy_not_a_success(person):
    identity, photos = person
    # A recoloured training photo and a mirrored one: a perfect likeness, and copies.
    copies = measure_grid(identity, photos, [[portrait((100, 0, 400, 300), colour=0.4),
                                              portrait((60, 0, 460, 400), mirror=True)]])
    assert copies.likeness is not None and copies.likeness < 0.3
    assert copies.memorisation >= THRESHOLDS.memorisation_limit
    first, second = copies.pictures[0]
    assert first.nearest_photo == "a.png" and first.photo_hash_bits <= 4 and first.memorisation == 1.0
    assert second.nearest_photo == "b.png" and second.photo_face_distance < 0.25
    assert copies.faces_found == 2 and copies.variety is not None and copies.variety < 0.3


def test_other_faces_and_noise_are_neither_alike_nor_copies(person):
    identity, photos = person
    others = measure_grid(identity, photos, [[stranger(3), stranger(5)], [noise(0), noise(1)]])
    assert others.likeness > THRESHOLDS.good_likeness
    assert others.memorisation < 0.1
    assert others.faces_found == 2 and others.variety > 0.5  # two different people: varied
    assert [p.face_distance is None for p in others.pictures[1]] == [True, True]
    assert others.metrics()["pictures"] == 4


def test_without_an_identity_only_the_pictures_are_compared(person):
    _, photos = person
    plain = TrainingPhotos.from_images(["a.png"], [portrait((100, 0, 400, 300))], None)
    measured = measure_grid(None, plain, [[portrait((100, 0, 400, 300)), noise(2)]])
    assert measured.faces_found is None and measured.likeness is None and measured.variety is None
    assert [p.memorisation for p in measured.pictures[0]] == [1.0, 0.0]


def rows(likeness, memorisation, every=100, faces=6):
    """Metrics rows of a run sampled every ``every`` steps, with loss rows between."""
    out = []
    for i, (like, mem) in enumerate(zip(likeness, memorisation, strict=True), start=1):
        out.append({"step": i * every - 1, "loss": 0.1})
        out.append({"step": i * every, "loss": 0.1, "likeness": like, "memorisation": mem, "variety": 0.3,
                    "faces_found": faces if like is not None else 0, "pictures": 6})
    return out


def test_the_earliest_step_as_alike_as_the_best_without_copying_is_recommended():
    metrics = rows([0.72, 0.50, 0.40, 0.39, 0.35], [0.10, 0.20, 0.30, 0.45, 0.75])
    choice = recommend(metrics)
    # 500 is the most alike but copies; 400 is best of the rest; 300 is as alike (within 0.02) and earlier.
    assert choice.step == 300 and (choice.likeness, choice.memorisation) == (0.40, 0.30)
    assert "step 300" in choice.reason and "0.40" in choice.reason
    assert best_likeness(metrics) == {"step": 500, "likeness": 0.35, "memorisation": 0.75}


def test_when_every_alike_step_copies_the_one_that_copies_least_is_recommended():
    choice = recommend(rows([0.7, 0.4, 0.3], [0.2, 0.8, 0.65]))
    assert choice.step == 300 and "copies least" in choice.reason and "add photos" in choice.reason


def test_when_no_step_looks_like_the_person_the_closest_is_recommended_with_train_longer():
    choice = recommend(rows([0.9, 0.8, 0.7], [0.0, 0.1, 0.2]))
    assert choice.step == 300 and "train longer" in choice.reason


def test_no_faces_no_identity_or_no_grids_recommend_the_final_lora():
    no_faces = recommend(rows([None, None], [0.0, 0.01]))
    assert no_faces.step is None and "no faces found" in no_faces.reason
    unprepared = recommend([{**r, "faces_found": None} for r in rows([None], [0.0])])
    assert unprepared.step is None and "not prepared" in unprepared.reason
    assert recommend([{"step": 1, "loss": 0.2}]).step is None
    # Step 0 is the untrained model: it is never the answer, however its faces scored.
    assert recommend([{"step": 0, "likeness": 0.2, "memorisation": 0.0, "faces_found": 6}]).step is None


def test_overfitting_warns_when_memorisation_passes_its_limit_and_says_what_to_do():
    sign = overfitting(rows([0.6, 0.45, 0.40], [0.1, 0.3, 0.7]))
    assert sign is not None and sign.step == 300 and sign.cause == "memorisation"
    assert "step 200 (recommended)" in sign.message and "learning rate" in sign.message
    assert "add photos" in sign.message and "\n" not in sign.message
    assert overfitting(rows([0.6, 0.45, 0.40], [0.1, 0.3, 0.5])) is None


def test_overfitting_warns_when_likeness_worsens_two_sample_steps_in_a_row():
    sign = overfitting(rows([0.5, 0.38, 0.42, 0.47], [0.1, 0.2, 0.3, 0.4]))
    assert sign is not None and sign.cause == "likeness" and "0.38 -> 0.42 -> 0.47" in sign.message
    assert "step 200 (recommended)" in sign.message
    assert overfitting(rows([0.5, 0.38, 0.42], [0.1, 0.2, 0.3])) is None  # once is not a trend
    assert overfitting(rows([0.38, 0.385, 0.39], [0.1, 0.2, 0.3])) is None  # within the noise between grids


def test_sample_step_checkpoints_survive_the_checkpoints_keep_rule():
    assert checkpoints_to_delete([100, 200, 250, 300, 400, 500], keep=2, sample_every=100) == [250]
    assert checkpoints_to_delete([2, 4, 6], keep=2, sample_every=0) == [2]
    assert checkpoints_to_delete([3, 6], keep=5, sample_every=3) == []


def colour_pixels(path, rgb: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < 30).sum())


GREEN, BLUE, RED = (44, 160, 44), (31, 119, 180), (214, 39, 40)  # matplotlib's tab:green, tab:blue, tab:red


def test_curves_png_marks_the_recommended_step_and_draws_the_sample_curves(tmp_path):
    metrics = rows([0.72, 0.50, 0.40, 0.39, 0.35], [0.10, 0.20, 0.30, 0.45, 0.75])
    marked = draw_curves(metrics, recommend(metrics), tmp_path / "curves.png", "me (tiny, rank 4, 5 steps)")
    assert Image.open(marked).size == (1000, 800)
    assert Image.open(marked).text["Title"].startswith("me (tiny, rank 4, 5 steps) · recommended: step")
    assert colour_pixels(marked, GREEN) > 500  # the recommended step's line through all three panels
    assert colour_pixels(marked, BLUE) > 500 and colour_pixels(marked, RED) > 500  # likeness, memorisation

    empty = draw_curves(rows([None, None], [0.0, 0.0]), recommend(rows([None, None], [0.0, 0.0])),
                        tmp_path / "no-faces.png", "me")
    assert colour_pixels(empty, GREEN) == 0  # nothing recommended: no line
    assert colour_pixels(empty, BLUE) < colour_pixels(marked, BLUE) / 3  # only the same-person line, no curve


def test_curves_png_with_loss_only(tmp_path):
    metrics = [{"step": s, "loss": 1.0 / s} for s in range(1, 40)]
    path = draw_curves(metrics, Recommendation(None, "no sample grids"), tmp_path / "curves.png", "me")
    assert path.is_file() and colour_pixels(path, GREEN) == 0


def test_the_warning_and_the_grid_measures_travel_through_the_job_events_to_the_cli(tmp_path):
    import io
    from pathlib import Path

    from engine.events import OverfittingWarning, SampleReady
    from engine.progress import TerminalProgress
    from engine.service.client import engine_event
    from engine.service.runner import EventRecorder
    from engine.service.sqlite_queue import SqliteJobQueue

    queue = SqliteJobQueue(tmp_path / "jobs.sqlite3")
    job = queue.submit("train", {}, "runs/me")
    recorder = EventRecorder(queue, job, tmp_path, cancel_on_progress=False)
    warning = OverfittingWarning(300, "memorisation", "overfitting at step 300: the samples copy the training "
                                                      "photos; stop here and use step 200 (recommended)")
    ready = SampleReady(300, tmp_path / "runs" / "me" / "samples" / "step-000300.png", 0.41, 0.4, 0.7, 0.3, 200)
    recorder(ready)
    recorder(warning)
    stored = queue.events(job.id)
    assert [e.type for e in stored] == ["queued", "sample_ready", "overfitting"]
    assert stored[1].data["recommended_step"] == 200 and stored[1].data["memorisation"] == 0.7
    # `likeness train --server` turns them back into the engine's events and prints them.
    back = [engine_event(e.model_dump(mode="json")) for e in stored[1:]]
    assert back == [SampleReady(300, Path("runs/me/samples/step-000300.png"), 0.41, 0.4, 0.7, 0.3, 200), warning]
    stream = io.StringIO()
    progress = TerminalProgress(stream=stream)
    for event in back:
        progress(event)
    printed = stream.getvalue().splitlines()
    assert printed[0] == "sample grid for step 300: runs/me/samples/step-000300.png, likeness 0.40, memorisation 0.70"
    assert printed[1] == f"warning: {warning.message}"


def test_cloud_runs_relay_the_warning_and_the_measures():
    from pathlib import Path

    from engine.events import OverfittingWarning, SampleReady
    from engine.placement.cloud.remote import event_to_message

    root = Path("/runs/me")
    message = event_to_message(SampleReady(3, root / "samples" / "step-000003.png", None, None, 0.1, None, None), root)
    assert message["memorisation"] == 0.1 and message["path"] == "samples/step-000003.png"
    assert event_to_message(OverfittingWarning(3, "likeness", "overfitting"), root) == {
        "kind": "overfitting", "step": 3, "cause": "likeness", "message": "overfitting"}
