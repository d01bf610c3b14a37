"""The explorers: every precomputed view holds the weights it claims to show."""

import pytest
import torch

from llm_lib.attention import example_inputs, simple_attention
from llm_lib.model import GPTConfig, GPTModel
from llm_lib.tokenizer import get_gpt2_encoding
from llm_lib.viz import attention_explorer, model_attention_explorer

pytest.importorskip("plotly")


def test_single_map_slider_shows_each_query_row():
    words, x = example_inputs()
    _, weights = simple_attention(x, return_weights=True)
    fig = attention_explorer(weights, words)
    heat, bars = fig.data
    assert heat.type == "heatmap" and bars.type == "bar"
    torch.testing.assert_close(torch.tensor(heat.z), weights, atol=5e-4, rtol=0)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == words
    for q, step in enumerate(steps):
        data, layout, traces = step.args
        assert list(traces) == [1]  # only the bar chart is restyled
        torch.testing.assert_close(torch.tensor(data["y"][0]), weights[q], atol=5e-4, rtol=0)
        assert layout["shapes"][0]["y0"] == q - 0.5


def test_layer_slider_switches_every_head():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3, 4, 5, 5), dim=-1)
    fig = attention_explorer(weights, list("abcde"))
    assert len(fig.data) == 4
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3
    for layer, step in enumerate(steps):
        for head, z in enumerate(step.args[0]["z"]):
            torch.testing.assert_close(torch.tensor(z), weights[layer, head], atol=5e-4, rtol=0)


def test_heads_without_layers_have_no_slider():
    fig = attention_explorer(torch.softmax(torch.randn(2, 3, 3), -1), ["x", "y", "x"])
    assert len(fig.data) == 2 and not fig.layout.sliders
    assert list(fig.layout.xaxis.ticktext) == ["x", "y", "x"]  # repeated tokens stay apart


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="weights cover 3x3 tokens but 2 tokens"):
        attention_explorer(torch.ones(3, 3) / 3, ["a", "b"])
    with pytest.raises(ValueError, match="expected weights of shape"):
        attention_explorer(torch.ones(5), ["a"])


def test_model_explorer_covers_every_layer_and_head():
    torch.manual_seed(1)
    cfg = GPTConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    model = GPTModel(cfg)
    tok = get_gpt2_encoding()
    fig = model_attention_explorer(model, tok, "Curious cats watch")
    ids = torch.tensor([tok.encode("Curious cats watch")])
    expected = model.attention_weights(ids)[:, 0]
    assert len(fig.data) == 4 and len(fig.layout.sliders[0].steps) == 2
    torch.testing.assert_close(torch.tensor(fig.layout.sliders[0].steps[1].args[0]["z"][3]),
                               expected[1, 3], atol=5e-4, rtol=0)


def test_sampling_explorer_views_match_the_sampling_rule():
    from llm_lib.generate import next_token_probabilities
    from llm_lib.viz import sampling_explorer

    torch.manual_seed(2)
    logits = torch.randn(40)
    labels = [f"t{i}" for i in range(40)]
    temps, ks = (0.0, 0.5, 1.0, 2.0), (None, 1, 5)
    fig = sampling_explorer(logits, labels, temperatures=temps, top_ks=ks, n_show=10)
    shown = torch.topk(logits, 10).indices
    assert [t for t in fig.layout.xaxis.ticktext] == [repr(labels[i]) for i in shown.tolist()]
    assert len(fig.layout.sliders) == len(ks) and len(fig.layout.updatemenus[0].buttons) == len(ks)
    for slider, k in zip(fig.layout.sliders, ks, strict=True):
        for step, t in zip(slider.steps, temps, strict=True):
            ghost, bars = step.args[0]["y"]
            expected = next_token_probabilities(logits, t, k)[shown]
            torch.testing.assert_close(torch.tensor(bars), expected, atol=5e-4, rtol=0)
            assert sum(b > 0 for b in bars) == (1 if (k == 1 or t == 0) else min(k or 10, 10))
            # the draws listed in the caption only name tokens that can be sampled
            drawn = step.args[1]["annotations[0].text"].split("draws: ")[1].split(", ")
            possible = torch.nonzero(next_token_probabilities(logits, t, k)).flatten().tolist()
            allowed = {repr(labels[i]) for i in possible}
            assert set(drawn) <= allowed


def test_sampling_explorer_rejects_bad_input():
    from llm_lib.viz import sampling_explorer

    with pytest.raises(ValueError, match="3 labels for a vocabulary of 4"):
        sampling_explorer(torch.zeros(4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sampling_explorer(torch.zeros(4), list("abcd"), temperatures=(-1.0,))


def test_live_widget_draws_the_typed_sentence(monkeypatch):
    pytest.importorskip("ipywidgets")
    import llm_lib.viz as viz

    drawn = []
    monkeypatch.setattr(viz, "model_attention_explorer", lambda m, t, text: drawn.append(text) or text)
    widget = viz.attention_explorer_widget(object(), object(), "first sentence")
    assert drawn == []  # nothing is drawn until asked
    box, button = widget.children[0].children
    button.click()
    box.value = "a sentence of my own"
    assert drawn == ["first sentence", "a sentence of my own"]


def test_notebook_outputs_are_small_and_load_nothing_from_a_cdn():
    import plotly.io as pio

    import llm_lib.viz  # noqa: F401  (configures the renderer)

    fig = attention_explorer(torch.ones(2, 2) / 2, ["a", "b"])
    bundle = pio.renderers[pio.renderers.default.split("+")[-1]].to_mimebundle(fig.to_dict())
    html = bundle["text/html"]
    assert "cdnjs" not in html and "cdn.plot.ly" not in html
    assert len(html) < 50_000  # the 4.8 MB plotly.js is loaded once by the page, not per output
