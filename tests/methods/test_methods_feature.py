"""FeatureSimilarity with tiny random-weight CLIP / ViT / DINOv2 folders written here (nothing is downloaded)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn_fast.data.dataset import CaptionedImages, Example, load_pixels
from unlearn_fast.errors import SettingsError
from unlearn_fast.methods.feature import FeatureSimilarity
from unlearn_fast.query import Query

transformers = pytest.importorskip("transformers")

WORDS = ["red", "green", "blue", "cat", "dog", "star", "heart", "a", "big", "small"]
N = 20


class TinySet(CaptionedImages):
    """N distinct patterned images (some not square or not 32 px, to exercise the crop and resize), 1-3 captions."""

    source = "tiny"

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images, self.caps = [], []
        for i in range(N):
            size = (32, 32) if i % 3 else (48, 40)
            base = rng.integers(0, 256, size=3)
            noise = rng.integers(-60, 60, size=(size[1] // 8, size[0] // 8, 3)).repeat(8, 0).repeat(8, 1)
            self.images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
            self.caps.append(tuple(" ".join(rng.choice(WORDS, size=3)) for _ in range(1 + i % 3)))

    def __len__(self):
        return N

    def example(self, index):
        return Example(index=index, key=f"img{index}", captions=self.caps[self._check_index(index)])

    def image(self, index):
        return self.images[self._check_index(index)]


@pytest.fixture(scope="module")
def dataset():
    return TinySet()


@pytest.fixture(scope="module")
def attributor(dataset):
    return SimpleNamespace(dataset=dataset, model=SimpleNamespace(resolution=32))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def _write_clip(folder):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(small, vocab_size=len(WORDS) + 2, max_position_embeddings=16, eos_token_id=2),
        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)


def _write_backbone(folder, kind):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)
    model = (transformers.ViTModel(transformers.ViTConfig(**small)) if kind == "vit"
             else transformers.Dinov2Model(transformers.Dinov2Config(**small)))
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> a saved random-weight model folder: "clip" (image + text), "vit" and "dinov2" (image only)."""
    torch.manual_seed(0)
    out = {kind: str(tmp_path_factory.mktemp(kind)) for kind in ("clip", "vit", "dinov2")}
    _write_clip(out["clip"])
    _write_backbone(out["vit"], "vit")
    _write_backbone(out["dinov2"], "dinov2")
    return out


@pytest.fixture(scope="module")
def clip_folder(folders):
    return folders["clip"]


def _queries(dataset, indices):
    pixels = load_pixels(dataset, 32, indices)
    return [Query(image=p, prompt=dataset.captions(i)[0]) for p, i in zip(pixels, indices)]


COPIES = [3, 11, 17]
KINDS = ["clip", "vit", "dinov2"]


@pytest.mark.parametrize("kind", KINDS)
def test_exact_copy_scores_highest(kind, folders, attributor, dataset):
    folder = folders[kind]
    scores = FeatureSimilarity(folder).score(attributor, _queries(dataset, COPIES))
    assert scores.shape == (len(COPIES), N) and scores.dtype == np.float32
    assert scores.argmax(axis=1).tolist() == COPIES
    np.testing.assert_allclose(scores[np.arange(len(COPIES)), COPIES], 1.0, atol=1e-5)
    assert np.all(scores <= 1.0 + 1e-5) and np.ptp(scores) > 1e-3  # not a constant: the encoder tells images apart


@pytest.mark.parametrize("kind", KINDS)
def test_scores_do_not_depend_on_batch_size(kind, folders, attributor, dataset):
    folder = folders[kind]
    queries = _queries(dataset, [0, 5])
    scores = [FeatureSimilarity(folder, batch_size=b).score(attributor, queries) for b in (1, 7, 256)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    np.testing.assert_allclose(scores[0], scores[2], atol=1e-5)


def _reference_embeddings(folder, images):
    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        if isinstance(model, transformers.CLIPModel):
            vision = model.vision_model(pixel_values=pixels)
            out = model.visual_projection(vision.pooler_output)
        else:
            out = model(pixel_values=pixels).last_hidden_state[:, 0]
    return torch.nn.functional.normalize(out, dim=-1).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_matches_a_direct_transformers_computation(kind, folders, attributor, dataset):
    folder = folders[kind]
    pixels = load_pixels(dataset, 32, [2, 9, 14])
    embeddings = _reference_embeddings(folder, [Image.fromarray(p) for p in pixels])
    scores = FeatureSimilarity(folder, batch_size=4).score(attributor, _queries(dataset, [2, 9, 14]))
    np.testing.assert_allclose(scores[:, [2, 9, 14]], embeddings @ embeddings.T, atol=1e-5)


def test_text_modality_averages_caption_cosines(clip_folder, attributor, dataset):
    model = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(clip_folder)

    def embed(texts):
        with torch.no_grad():
            text = model.text_model(**tokenizer(texts, padding=True, return_tensors="pt"))
            return torch.nn.functional.normalize(model.text_projection(text.pooler_output), dim=-1).numpy()

    queries = _queries(dataset, [4, 8])
    scores = FeatureSimilarity(clip_folder, modality="text", batch_size=3).score(attributor, queries)
    assert scores.shape == (2, N) and scores.dtype == np.float32
    prompts = embed([q.prompt for q in queries])
    expected = np.stack([(prompts @ embed(list(dataset.captions(i))).T).mean(axis=1) for i in range(N)], axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    single = FeatureSimilarity(clip_folder, modality="text").score(attributor, _queries(dataset, [6]))
    assert dataset.captions(6) == (dataset.captions(6)[0],)  # one caption: the prompt is an exact copy of it
    assert single.argmax() == 6 and single[0, 6] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_text_modality_needs_a_text_encoder(kind, folders, attributor, dataset):
    with pytest.raises(SettingsError, match=folders[kind]):
        FeatureSimilarity(folders[kind], modality="text").score(attributor, _queries(dataset, [0]))


def test_bad_folders_and_settings_are_settings_errors(tmp_path, attributor, dataset):
    missing = str(tmp_path / "no-such-encoder")
    for method in (lambda: FeatureSimilarity(missing).score(attributor, _queries(dataset, [0])),
                   lambda: FeatureSimilarity(missing).settings()):
        with pytest.raises(SettingsError, match="no-such-encoder"):
            method()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SettingsError, match="empty"):
        FeatureSimilarity(str(empty)).score(attributor, _queries(dataset, [0]))
    (empty / "config.json").write_text(json.dumps({"hidden_size": 4}))  # a config without a model type
    with pytest.raises(SettingsError, match="empty"):
        FeatureSimilarity(str(empty)).score(attributor, _queries(dataset, [0]))
    for bad in (dict(modality="audio"), dict(batch_size=0)):
        with pytest.raises(SettingsError):
            FeatureSimilarity(str(empty), **bad)


def test_settings_and_cached_runs(clip_folder, tmp_path, attributor, dataset):
    from unlearn_fast.methods.base import run_method
    from unlearn_fast.store import Binding, WorkDir

    method = FeatureSimilarity(clip_folder, batch_size=5)
    settings = method.settings()
    assert settings["encoder"] == clip_folder and settings["modality"] == "image" and "batch_size" not in settings
    assert method.key == FeatureSimilarity(clip_folder, batch_size=64).key  # batch size: memory only
    assert method.key != FeatureSimilarity(clip_folder, modality="text").key
    work = WorkDir(tmp_path / "work")
    work.bind(Binding(inputs={"model": "model", "data": dataset.fingerprint()}, settings={}))
    with_store = SimpleNamespace(**vars(attributor), store=work, on_main=lambda write: write(),  # one process
                                 prepare=lambda methods=(): with_store,
                                 data_fingerprint=lambda: None)
    queries = _queries(dataset, [1, 12])
    first = run_method(method, with_store, queries)
    assert first.scores.argmax(axis=1).tolist() == [1, 12]
    again = FeatureSimilarity(clip_folder)
    np.testing.assert_array_equal(run_method(again, with_store, queries).scores, first.scores)
    assert again._loaded is None  # read back from the work directory: the encoder was never loaded
