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
