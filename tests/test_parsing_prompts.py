import pytest

from agent_cir.parsing import extract_json
from agent_cir.prompts import PromptError, PromptTemplate, load_prompt


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure!\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}),
        ('reasoning first... {"a": "x}y"} trailing', {"a": "x}y"}),
        ('{"a": 1,}', {"a": 1}),
        ("{'a': 'b'}", {"a": "b"}),
        ("no json here", None),
        ("", None),
    ],
)
def test_extract_json_tolerates_common_model_output(text, expected):
    assert extract_json(text) == expected


def test_extract_json_prefers_objects_but_returns_a_list_when_only_a_list():
    assert extract_json("ranking: [3, 1, 2]") == [3, 1, 2]
    assert extract_json("[1] then {\"b\": 2}") == {"b": 2}
    assert extract_json("[1] then {\"b\": 2}", prefer=list) == [1]


def test_template_splits_roles_and_hash_tracks_the_text(tmp_path):
    path = tmp_path / "mine.j2"
    path.write_text("[system]\nYou help.\n[user]\nCaption: {{ caption }}\n")
    template = load_prompt(path)
    assert template.render_messages(caption="a dog") == [("system", "You help."), ("user", "Caption: a dog")]
    first_hash = template.hash
    path.write_text("[system]\nYou help a lot.\n[user]\nCaption: {{ caption }}\n")
    assert PromptTemplate(name="mine", path=path, source=path.read_text()).hash != first_hash


def test_missing_variable_and_missing_template_are_clear(tmp_path):
    path = tmp_path / "t.j2"
    path.write_text("{{ caption }} {{ modification }}")
    with pytest.raises(PromptError, match="modification"):
        load_prompt(path).render(caption="x")
    with pytest.raises(PromptError, match="not found"):
        load_prompt("no_such_prompt_anywhere")
