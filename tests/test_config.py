import json
from pathlib import Path

import pytest

from agent_cir.config import ConfigError, Recipe, load_recipe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_minimal_recipe_has_sane_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: tiny\n"))
    assert recipe.name == "tiny"
    assert recipe.retrieve.mode == "text" and recipe.retrieve.k == 50
    assert not recipe.caption.enabled and not recipe.rewrite.enabled and not recipe.rerank.enabled


def test_unknown_key_is_named_with_its_path_and_file(tmp_path):
    path = write(tmp_path, "retrieve:\n  mode: fusion\n  alfa: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "retrieve.alfa" in message and "unknown key" in message and str(path) in message


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"retrieve.alpha"):
        load_recipe(write(tmp_path, "retrieve:\n  alpha: 3\n"))
    with pytest.raises(ConfigError, match=r"retrieve.mode"):
        load_recipe(write(tmp_path, "retrieve:\n  mode: telepathy\n"))


def test_stage_naming_an_undefined_model_is_refused(tmp_path):
    text = "models:\n  llm: {spec: 'fake:'}\nrewrite:\n  enabled: true\n  model: lm\n"
    with pytest.raises(ConfigError, match=r"rewrite.model names 'lm'.*defined: llm"):
        load_recipe(write(tmp_path, text))


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3, column 1"):
        load_recipe(write(tmp_path, "name: x\nretrieve:\n\tmode: text\n"))


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_missing_recipe_lists_packaged_ones(tmp_path):
    with pytest.raises(ConfigError, match="not found.*agent-cir recipes"):
        load_recipe(tmp_path / "nope.yaml")


def test_one_stage_excludes_caption_and_rewrite():
    with pytest.raises(Exception, match="one_stage replaces caption and rewrite"):
        Recipe.model_validate(
            {
                "models": {"vlm": {"spec": "fake:"}},
                "one_stage": {"enabled": True},
                "caption": {"enabled": True},
            }
        )


def test_overrides_deep_merge_and_hash_changes(tmp_path):
    path = write(tmp_path, "retrieve:\n  mode: fusion\n  alpha: 0.5\n")
    base = load_recipe(path)
    changed = load_recipe(path, {"retrieve": {"k": 7}})
    assert changed.retrieve.k == 7 and changed.retrieve.alpha == 0.5 and changed.retrieve.mode == "fusion"
    assert base.hash != changed.hash
    assert load_recipe(path).hash == base.hash


def test_recipe_hash_and_dumps_never_carry_the_api_key():
    from agent_cir.config import redacted_recipe_dump

    one = load_recipe("default", {"models": {"llm": {"api_key": "sk-one"}}})
    two = load_recipe("default", {"models": {"llm": {"api_key": "sk-two"}}})
    assert one.hash == two.hash  # the key is redacted before hashing
    dump = redacted_recipe_dump(one)
    assert dump["models"]["llm"]["api_key"] == "<redacted>" and "sk-one" not in str(dump)
    assert one.models["llm"].api_key == "sk-one"  # the live recipe keeps it for the backend


# --- redaction by key name and by value shape (issue 18, case 9) -------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent_cir.config import redact_secrets, redacted_recipe_dump  # noqa: E402


def test_secrets_in_urls_headers_and_extra_never_reach_the_dump():
    recipe = Recipe.model_validate({"models": {"llm": {
        "spec": "openai:m",
        "base_url": "http://alice:hunter2pass@proxy.local:8000/v1?api_key=sk-query-123&mode=fast",
        "extra": {"default_headers": {"Authorization": "Bearer sk-bearer-456", "X-Api-Key": "xk-789"},
                  "openai_api_key": "sk-extra-000", "default_query": {"sig": "sig-abc"}},
    }}})
    dumped = json.dumps(redacted_recipe_dump(recipe))
    for secret in ("hunter2pass", "sk-query-123", "sk-bearer-456", "xk-789", "sk-extra-000", "sig-abc"):
        assert secret not in dumped, secret
    model = redacted_recipe_dump(recipe)["models"]["llm"]
    assert model["base_url"].startswith("http://alice:<redacted>@proxy.local:8000/v1?")
    assert "mode=fast" in model["base_url"]  # harmless query parameters stay, for provenance


def test_counting_and_sampling_settings_are_not_taken_for_secrets():
    data = {"max_tokens": 512, "top_k": 40, "input_tokens": 12, "tokenizer": "bpe", "monkey": "x",
            "keyframes": "all", "api_key_env": "OPENAI_API_KEY", "structured": True, "token_limit": 100,
            "url": "http://host:8000/v1?mode=a&limit=3", "api_key": None}
    assert redact_secrets(data) == data


def test_run_json_models_block_redacts_the_base_url():
    from agent_cir.eval.provenance import models_used

    recipe = Recipe.model_validate({
        "models": {"llm": {"spec": "openai:m", "base_url": "https://u:pw-secret-1@h/v1?token=t-secret-2"}},
        "rewrite": {"enabled": True, "model": "llm"},
    })
    assert "secret" not in json.dumps(models_used(recipe))


_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=10, max_size=20).map(lambda s: "S3CR" + s)
_PLAIN_KEY = st.sampled_from(["spec", "extra", "options", "headers", "nested", "model", "url", "items"])
_SECRET_KEY = st.sampled_from(["api_key", "X-Api-Key", "Authorization", "access_token", "client_secret",
                               "password", "openai_api_key", "apiKey", "credentials", "Proxy-Authorization"])


@st.composite
def _planted(draw, depth=0):
    """A nested config with secrets planted at any depth, under secret keys and inside URLs."""
    kind = draw(st.integers(0, 4 if depth < 4 else 2))
    if kind == 0:
        return {draw(_SECRET_KEY): draw(_SECRET)}
    if kind == 1:
        secret = draw(_SECRET)
        shape = draw(st.sampled_from(["https://user:{}@host/v1", "http://h:1/v1?api_key={}&x=1",
                                      "http://h/v1?a=1&token={}", "Bearer {}", "https://h/x?sig={}"]))
        return shape.format(secret)
    if kind == 2:
        return draw(st.sampled_from([1, "plain", None, 0.5, True]))
    if kind == 3:
        return {draw(_PLAIN_KEY): draw(_planted(depth + 1)) for _ in range(draw(st.integers(1, 3)))}
    return [draw(_planted(depth + 1)) for _ in range(draw(st.integers(1, 3)))]


@settings(max_examples=300, deadline=None)
@given(_planted())
def test_no_planted_secret_survives_redaction_anywhere(config):
    import re

    planted = set(re.findall(r"S3CR[a-z0-9]+", json.dumps(config)))
    out = json.dumps(redact_secrets(config))
    assert not any(secret in out for secret in planted)


# --- recipe YAML limits (issue 18, case 14) ---------------------------------------------------------------


def test_a_billion_laughs_recipe_is_refused_quickly(tmp_path):
    import time

    lines = ["lol0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    text = "models:\n  m:\n    spec: 'fake:'\n    extra:\n" + "".join(f"      {line}\n" for line in lines)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases") as err:
        load_recipe(write(tmp_path, text))
    assert time.monotonic() - started < 2.0 and "recipe.yaml" in str(err.value)


def test_recursive_aliases_and_huge_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="recursive alias"):
        load_recipe(write(tmp_path, "by_dataset: &loop\n  circo: [*loop]\n"))
    big = tmp_path / "big.yaml"
    big.write_text("description: '" + "x" * 1_200_000 + "'\n")
    with pytest.raises(ConfigError, match="bytes"):
        load_recipe(big)


def test_a_few_shared_aliases_still_load(tmp_path):
    text = ("models:\n  a: &base {spec: 'fake:', temperature: 0.3, extra: {responses: [x]}}\n"
            "  b: *base\n")
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.models["b"].temperature == 0.3


# --- grid size bound (issue 18, case 22) -------------------------------------------------------------------


@pytest.mark.parametrize("grid", [{"cell_size": 60000}, {"rows": 200, "cols": 200, "cell_size": 512}])
def test_a_grid_too_large_to_hold_in_memory_is_refused_with_its_size(tmp_path, grid):
    body = "".join(f"    {k}: {v}\n" for k, v in grid.items())
    with pytest.raises(ConfigError, match=r"rerank\.grid"):
        load_recipe(write(tmp_path, "rerank:\n  grid:\n" + body))


def test_an_ordinary_large_grid_is_accepted(tmp_path):
    recipe = load_recipe(write(tmp_path, "rerank:\n  grid: {rows: 4, cols: 5, cell_size: 1024}\n"))
    assert recipe.rerank.grid.cell_size == 1024
