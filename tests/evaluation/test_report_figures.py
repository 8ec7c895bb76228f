"""The reports' pictures: legends off the data, short names, labelled axes, a note where there is no data."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg

from safety_modules.data.rtvlm import SUBTASKS
from safety_modules.evaluation.rtvlm import RTVLMResult, scores_figure, summarize
from safety_modules.evaluation.unsafe_concepts_report import gap_figure


def drawn(figure):
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def texts(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts]


def test_rtvlm_legend_is_beside_the_bars_with_short_names():
    rows = [{"subtask": s, "score": 5.0} for s in SUBTASKS]
    subtasks, score = summarize(rows)
    result = RTVLMResult(rows=rows, subtasks=subtasks, score=score, approximate=True, judge="rules")
    figure = scores_figure(result, "tiny-llava [policy /home/someone/runs/calibrated/policy.yaml]")
    renderer = drawn(figure)
    (ax,) = figure.axes
    legend = ax.get_legend()
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries[0] == "tiny-llava [policy policy.yaml]" and not any("/" in e for e in entries)
    assert ax.get_xlabel() and ax.get_ylabel()


def test_modality_gap_says_no_data_when_every_answer_was_na():
    none = {k: {"accuracy": None, "na": 5, "valid": 0, "n": 5} for k in ("Hate", "Sexual", "overall")}
    figure = gap_figure(none, none, list(none))
    assert any(t.startswith("no data") for t in texts(figure))
    assert figure.axes[0].get_legend() is None

    some = {k: {"accuracy": 0.5, "na": 0, "valid": 5, "n": 5} for k in ("Hate", "overall")}
    figure = gap_figure(some, some, list(some))
    renderer = drawn(figure)
    ax = figure.axes[0]
    assert not any(t.startswith("no data") for t in texts(figure))
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    assert ax.get_xlabel() and ax.get_ylabel()
