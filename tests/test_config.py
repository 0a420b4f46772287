"""Config loading: one-to-one keys, clear errors, overrides, paths relative to the config."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stardist_hpc.config import HpcConfig, LocalConfig, describe, load
from stardist_hpc.errors import UserError

REPO = Path(__file__).resolve().parents[1]


#: the keys a GPU-step config needs besides the ones a test is about.
IMAGE_AND_MODEL = "image: {path: a.tif}\nmodel: {basedir: models, name: demo}\n"


def _write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("cls, template", [(LocalConfig, "local_template.yaml"),
                                           (HpcConfig, "hpc_prediction_template.yaml")])
def test_templates_load_and_resolve_paths_against_their_directory(cls, template):
    config = load(cls, REPO / template)
    output = config.output.path if cls is LocalConfig else config.output.labels
    assert output.parent == REPO / "output"


def test_gpu_step_names_its_model_and_hpc_template_uses_the_files_rays():
    local = load(LocalConfig, REPO / "local_template.yaml")
    assert (local.model.basedir, local.model.name) == (REPO / "models", "demo")
    hpc = load(HpcConfig, REPO / "hpc_prediction_template.yaml")
    assert (hpc.model.basedir, hpc.model.name) == (None, None)


@pytest.mark.parametrize("missing", ["basedir", "name"])
def test_gpu_step_model_has_no_default(tmp_path, missing):
    model = {"basedir": "models", "name": "demo"}
    del model[missing]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"image": {"path": "img.tif"}, "model": model}))
    with pytest.raises(UserError, match=f"'model.{missing}' is required"):
        load(LocalConfig, path)


@pytest.mark.parametrize("cls, template", [(LocalConfig, "local_template.yaml"),
                                           (HpcConfig, "hpc_prediction_template.yaml")])
def test_templates_name_every_key(cls, template):
    raw = yaml.safe_load((REPO / template).read_text())

    def has(node, dotted):
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True
    assert [k for k, _, _ in describe(cls) if not has(raw, k)] == []


@pytest.mark.parametrize("cls, doc", [(LocalConfig, "configuration_local_prediction.md"),
                                      (HpcConfig, "configuration_hpc_prediction.md")])
def test_every_key_is_documented(cls, doc):
    text = (REPO / "doc" / doc).read_text()
    assert [k for k, _, _ in describe(cls) if f"`{k}`" not in text] == []


def test_misspelled_key_suggests_the_right_one(tmp_path):
    path = _write(tmp_path, IMAGE_AND_MODEL + "prediction: {block_shap: [1, 2, 3]}\n")
    with pytest.raises(UserError, match=r"prediction.block_shap.*did you mean 'block_shape'"):
        load(LocalConfig, path)


@pytest.mark.parametrize("text, field", [
    ("prediction: {block_shape: [0, 8, 8]}", r"prediction\.block_shape\[0\]"),
    ("prediction: {block_shape: [8, 8]}", r"prediction\.block_shape"),
    ("prediction: {prob_thresh: high}", r"prediction\.prob_thresh"),
    ("model: {basedir: models, name: 3}", r"model\.name"),
    ("prediction: {normalize: {pmax: 101}}", r"prediction\.normalize\.pmax"),
])
def test_wrong_values_name_the_field(tmp_path, text, field):
    text = text if text.startswith("model") else "model: {basedir: models, name: demo}\n" + text
    path = _write(tmp_path, "image: {path: a.tif}\n" + text + "\n")
    with pytest.raises(UserError, match=rf"'{field}': expected"):
        load(LocalConfig, path)


def test_negative_channel(tmp_path):
    with pytest.raises(UserError, match=r"'image\.channel': expected an integer >= 0"):
        load(LocalConfig, _write(tmp_path, "model: {basedir: models, name: demo}\n"
                                           "image: {path: a.tif, channel: -1}\n"))


@pytest.mark.parametrize("channel, expected", [("[2, 0]", (2, 0)), ("[1]", (1,)), ("3", 3)])
def test_channel_list(tmp_path, channel, expected):
    config = load(LocalConfig, _write(tmp_path, "model: {basedir: models, name: demo}\n"
                                                f"image: {{path: a.tif, channel: {channel}}}\n"))
    assert config.image.channel == expected


@pytest.mark.parametrize("channel", ["[]", "[0, 0]", "[0, -1]"])
def test_bad_channel_list(tmp_path, channel):
    with pytest.raises(UserError, match=r"'image\.channel(\[1\])?': expected"):
        load(LocalConfig, _write(tmp_path, "model: {basedir: models, name: demo}\n"
                                           f"image: {{path: a.tif, channel: {channel}}}\n"))


def test_required_key(tmp_path):
    with pytest.raises(UserError, match="'image.path' is required"):
        load(LocalConfig, _write(tmp_path, "model: {name: demo}\n"))


def test_cluster_mode_is_checked(tmp_path):
    with pytest.raises(UserError, match="cluster.mode.*'slurm'"):
        load(HpcConfig, _write(tmp_path, "cluster: {mode: slurn}\n"))


def test_overrides_are_yaml_and_checked(tmp_path):
    path = _write(tmp_path, IMAGE_AND_MODEL)
    config = load(LocalConfig, path, ["prediction.block_shape=[8, 16, 16]"])
    assert config.prediction.block_shape == (8, 16, 16)
    assert config.image.path == tmp_path / "a.tif"
    with pytest.raises(UserError, match="prediction.blok"):
        load(LocalConfig, path, ["prediction.blok=[8, 16, 16]"])
    with pytest.raises(UserError, match="key.sub=value"):
        load(LocalConfig, path, ["prediction.block_shape"])


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(LocalConfig, tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load(LocalConfig, _write(tmp_path, "image: [unclosed\n"))


def test_configs_are_frozen(tmp_path):
    config = load(LocalConfig, _write(tmp_path, IMAGE_AND_MODEL))
    with pytest.raises(AttributeError):
        config.image.channel = 3


def test_fixed_normalisation_needs_both_values(tmp_path):
    with pytest.raises(UserError, match=r"'prediction.normalize.hi' is required"):
        load(LocalConfig, _write(tmp_path, IMAGE_AND_MODEL +
                                           "prediction: {normalize: {lo: 100}}\n"))
    with pytest.raises(UserError, match=r"'prediction.normalize.hi': expected a number greater"):
        load(LocalConfig, _write(tmp_path, IMAGE_AND_MODEL +
                                           "prediction: {normalize: {lo: 100, hi: 50}}\n"))
    with pytest.raises(UserError, match=r"'prediction.normalize.method': expected one of"):
        load(LocalConfig, _write(tmp_path, IMAGE_AND_MODEL +
                                           "prediction: {normalize: {method: exakt}}\n"))
