"""Secrets in any shape are written nowhere (issue 18, case 9): an eval's every file and its report."""

from __future__ import annotations

from agent_cir.config import load_recipe
from agent_cir.eval.runner import run_eval
from agent_cir.report import build_report

SECRETS = ("pw-SECRET-url-01", "sk-SECRET-query-02", "sk-SECRET-bearer-03", "xk-SECRET-header-04",
           "sk-SECRET-extra-05", "tok-SECRET-override-06")


def test_secrets_in_urls_headers_and_extra_reach_no_file_of_an_eval_or_its_report(mini_cirr, tmp_path, bow_encoder):
    models = {"unused": {
        "spec": "openai:gpt-4o",
        "base_url": f"http://alice:{SECRETS[0]}@proxy.local:8000/v1?api_key={SECRETS[1]}",
        "extra": {"default_headers": {"Authorization": f"Bearer {SECRETS[2]}", "X-Api-Key": SECRETS[3]},
                  "openai_api_key": SECRETS[4]},
    }}
    recipe = load_recipe("surrogate_caption_mod", {"models": models})
    out = tmp_path / "run"
    run_eval(recipe=recipe, out_dir=out, limit=2, dataset="cirr", split="val", images_root=None,
             gallery_captions=mini_cirr["captions"], annotations=mini_cirr["annotations"], encoder=bow_encoder,
             progress=False, overrides={"models": {"other": {"spec": "openai:x",
                                                             "extra": {"default_query": {"token": SECRETS[5]}}}}})
    build_report(out, tmp_path / "report")
    written = [path for folder in (out, tmp_path / "report") for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "run.json" for path in written)
    for path in written:
        text = path.read_text(encoding="utf-8", errors="replace")
        for secret in SECRETS:
            assert secret not in text, (path, secret)
