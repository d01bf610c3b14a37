"""Interactive explorers for the book (chapters 14, 18, 23-24; 29-30).

The explorers are plotly figures whose controls (sliders, buttons) switch
between views computed in advance, so they stay interactive in the static
HTML book, with no Python kernel behind the page. With a kernel, the
``*_widget`` functions add what needs Python: typing your own sentence.

In a notebook, ``setup_plotly()`` (called on import) makes each figure's
output small: the plotly.js library is loaded once by the page (the book
ships it; JupyterLab and Colab bring their own) instead of being embedded
in every output.
"""

from __future__ import annotations

import re
import sys

import torch

__all__ = [
    "setup_plotly",
    "attention_explorer",
    "model_attention_explorer",
    "attention_explorer_widget",
    "sampling_explorer",
    "plot_losses",
]

_BLUES = "Blues"


_CDN_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')


def setup_plotly() -> None:
    """Render plotly figures as JSON plus a small HTML stub that uses the page's plotly.js."""
    import plotly.io as pio
    from plotly.io._base_renderers import NotebookRenderer

    if "google.colab" in sys.modules:
        return  # Colab's own renderer works as it is

    class BookRenderer(NotebookRenderer):
        """plotly's notebook renderer minus the MathJax it always loads from a CDN.

        Our figures hold no LaTeX, and a second MathJax would fight the book's own.
        """

        def to_mimebundle(self, fig_dict):
            bundle = super().to_mimebundle(fig_dict)
            bundle["text/html"] = _CDN_MATHJAX.sub("", bundle["text/html"])
            return bundle

    renderer = BookRenderer()
    renderer.global_init = False  # nothing but the figure in each output; the page brings plotly.js
    pio.renderers["llm_lib_book"] = renderer
    pio.renderers.default = "plotly_mimetype+llm_lib_book"


def _as_4d(weights) -> torch.Tensor:
    w = torch.as_tensor(weights).detach().float().cpu()
    if w.dim() == 2:
        return w[None, None]
    if w.dim() == 3:
        return w[None]
    if w.dim() == 4:
        return w
    raise ValueError(f"expected weights of shape (T, T), (heads, T, T) or (layers, heads, T, T), "
                     f"got {tuple(w.shape)}")


def _round(t: torch.Tensor) -> list:
    return t.round(decimals=3).tolist()  # three decimals: small pages, exact enough to read


def attention_explorer(weights, tokens: list[str], title: str = "Attention weights",
                       head_labels: list[str] | None = None):
    """A plotly figure of attention weights; the controls switch views without a kernel.

    ``weights`` of shape ``(T, T)``: one heatmap plus, on the right, a bar chart
    of one query token's weights, chosen with a slider. ``(heads, T, T)``: one
    heatmap per head side by side. ``(layers, heads, T, T)``: the heads of one
    layer, with a slider to choose the layer. Rows are queries (the token that
    looks), columns are keys (the tokens it looks at).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    w = _as_4d(weights)
    n_layers, n_heads, n_q, n_k = w.shape
    if n_q != n_k or n_k != len(tokens):
        raise ValueError(f"weights cover {n_q}x{n_k} tokens but {len(tokens)} tokens were given")
    ticks = dict(tickmode="array", tickvals=list(range(n_k)), ticktext=list(tokens))
    single = n_layers == 1 and n_heads == 1

    if single:
        fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.14,
                            subplot_titles=("all queries", f"weights of query {tokens[0]!r}"))
        z = w[0, 0]
        fig.add_trace(go.Heatmap(z=_round(z), zmin=0, zmax=1, colorscale=_BLUES, showscale=False,
                                 texttemplate="%{z:.2f}" if n_k <= 10 else None,
                                 hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}"
                                               "<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=list(range(n_k)), y=_round(z[0]), marker_color="#2a6fb0",
                             text=[f"{v:.2f}" for v in z[0].tolist()], textposition="outside",
                             hovertemplate="key %{x}<br>weight %{y:.3f}<extra></extra>"),
                      row=1, col=2)
        fig.update_xaxes(ticks, row=1, col=1, title_text="key (looked at)")
        fig.update_yaxes(ticks, row=1, col=1, title_text="query (looking)", autorange="reversed")
        fig.update_xaxes(ticks, row=1, col=2, title_text="key")
        fig.update_yaxes(range=[0, 1.1], row=1, col=2, title_text="weight")
        # Each slider step redraws the bars (trace 1 only) and moves the box to the query's row.
        steps = [dict(label=tokens[q], method="update",
                      args=[{"y": [_round(z[q])], "text": [[f"{v:.2f}" for v in z[q].tolist()]]},
                            {"shapes": [_row_box(q, n_k)],
                             "annotations[1].text": f"weights of query {tokens[q]!r}"},
                            [1]])
                 for q in range(n_q)]
        fig.update_layout(shapes=[_row_box(0, n_k)],
                          sliders=[dict(active=0, steps=steps, pad=dict(t=60),
                                        currentvalue=dict(prefix="query: "))])
    else:
        cols = min(n_heads, 2 if n_heads <= 4 else 3)  # the book's text column is ~750 px wide
        rows = -(-n_heads // cols)
        labels = head_labels or [f"head {h + 1}" for h in range(n_heads)]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels,
                            horizontal_spacing=0.08, vertical_spacing=0.3 / rows)
        for h in range(n_heads):
            r, c = divmod(h, cols)
            fig.add_trace(go.Heatmap(
                z=_round(w[0, h]), zmin=0, zmax=1, colorscale=_BLUES, showscale=(h == 0),
                colorbar=dict(title="weight", len=0.9),
                hovertemplate=f"{labels[h]}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}"
                              "<extra></extra>"), row=r + 1, col=c + 1)
            fig.update_xaxes(ticks, row=r + 1, col=c + 1, tickangle=-60, tickfont=dict(size=10))
            fig.update_yaxes(ticks, row=r + 1, col=c + 1, autorange="reversed",
                             showticklabels=(c == 0), tickfont=dict(size=10))
        if n_layers > 1:
            steps = [dict(label=str(layer + 1), method="restyle",
                          args=[{"z": [_round(w[layer, h]) for h in range(n_heads)]}])
                     for layer in range(n_layers)]
            fig.update_layout(sliders=[dict(active=0, steps=steps, pad=dict(t=50),
                                            currentvalue=dict(prefix="layer: "))])
    height = 420 if single else 300 * rows + 170
    fig.update_layout(title=dict(text=title), height=height, margin=dict(l=60, r=30, t=80, b=40),
                      showlegend=False, template="plotly_white")
    return fig


def _row_box(q: int, n_k: int) -> dict:
    return dict(type="rect", xref="x", yref="y", x0=-0.5, x1=n_k - 0.5, y0=q - 0.5, y1=q + 0.5,
                line=dict(color="#d62728", width=3))


def model_attention_explorer(model, tokenizer, text: str, title: str | None = None):
    """The attention explorer for every layer and head of a ``GPTModel`` reading ``text``."""
    from .generate import text_to_token_ids

    ids = text_to_token_ids(text, tokenizer)
    weights = model.attention_weights(ids)[:, 0]  # (layers, heads, T, T)
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    return attention_explorer(weights, tokens, title=title or f"Attention in {text!r}")


def attention_explorer_widget(model, tokenizer, text: str):
    """A text box and the model's attention explorer for whatever sentence is typed (needs a kernel).

    Nothing is drawn until the reader presses Enter in the box or clicks
    "Draw": drawing into an Output widget while a notebook is executed
    unattended was seen to stall nbclient, and the static explorer above the
    widget already shows the default sentence.
    """
    import ipywidgets as widgets
    from IPython.display import display

    box = widgets.Text(value=text, description="sentence:", continuous_update=False,
                       layout=widgets.Layout(width="70%"))
    button = widgets.Button(description="Draw", button_style="primary")
    out = widgets.Output()

    def redraw(*_):
        out.outputs = ()
        with out:
            display(model_attention_explorer(model, tokenizer, box.value))

    box.observe(redraw, names="value")
    button.on_click(redraw)
    return widgets.VBox([widgets.HBox([box, button]), out])


_CLEAR = "rgba(0,0,0,0)"  # an outline-only bar


def _bar_text(values: list[float]) -> list[str]:
    return [f"{v:.2f}" if v >= 0.005 else "" for v in values]


def _sampling_view(logits: torch.Tensor, shown: torch.Tensor, temperature: float, top_k: int | None,
                   n_samples: int, seed: int):
    from .generate import next_token_probabilities

    probs = next_token_probabilities(logits, temperature, top_k)
    unfiltered = next_token_probabilities(logits, temperature, None)
    generator = torch.Generator().manual_seed(seed)
    samples = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
    return probs[shown], unfiltered[shown], samples


def sampling_explorer(logits, labels, temperatures=(0.0, 0.3, 0.7, 1.0, 1.5, 2.5),
                      top_ks=(None, 1, 3, 5, 10), n_show: int = 15, n_samples: int = 8,
                      seed: int = 123, title: str = "Next-token distribution"):
    """A plotly figure of the next-token distribution under temperature and top-k, explorable without a kernel.

    ``logits`` has shape ``(vocab,)``; ``labels[i]`` names token ``i`` (e.g. its
    decoded text). The ``n_show`` most likely tokens are drawn as bars: blue
    where the token can be sampled, with a grey outline of the probability it
    would have without top-k. A slider sets the temperature, buttons set k;
    each view also lists ``n_samples`` tokens drawn from it with a fixed seed.
    """
    import plotly.graph_objects as go

    logits = torch.as_tensor(logits).detach().float().cpu()
    if logits.dim() != 1:
        raise ValueError(f"expected logits of shape (vocab,), got {tuple(logits.shape)}")
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for a vocabulary of {len(logits)} tokens")
    temperatures, top_ks = list(temperatures), list(top_ks)
    n_show = min(n_show, len(logits))
    shown = torch.topk(logits, n_show).indices
    names = [repr(labels[i]) for i in shown.tolist()]
    x = list(range(n_show))

    def k_label(k):
        return "all" if k is None else str(k)

    def view(t, k):
        """(restyle payload for both bar traces, caption) of one temperature and k."""
        probs, unfiltered, samples = _sampling_view(logits, shown, t, k, n_samples, seed)
        drawn = ", ".join(repr(labels[i]) for i in samples.tolist())
        bars = _round(probs)
        colors = ["#2a6fb0" if p > 0 else "#cccccc" for p in probs.tolist()]
        restyle = {"y": [_round(unfiltered), bars], "marker.color": [_CLEAR, colors],
                   "text": [[""] * n_show, _bar_text(bars)]}
        return restyle, f"T = {t:g}, top-k = {k_label(k)}<br>{n_samples} draws: {drawn}"

    views = {(t, k): view(t, k) for k in top_ks for t in temperatures}
    t0 = temperatures.index(1.0) if 1.0 in temperatures else 0
    first, caption = views[(temperatures[t0], top_ks[0])]
    fig = go.Figure([
        go.Bar(x=x, y=first["y"][0], name="without top-k", marker=dict(color=_CLEAR,
               line=dict(color="#999999", width=1.5)), hovertemplate="%{y:.3f}<extra>without top-k</extra>"),
        go.Bar(x=x, y=first["y"][1], name="sampling probability", marker=dict(color=first["marker.color"][1]),
               text=first["text"][1], textposition="outside",
               hovertemplate="%{y:.3f}<extra>sampled with</extra>"),
    ])
    sliders = [dict(active=t0, visible=(ki == 0), pad=dict(t=70), currentvalue=dict(prefix="temperature: "),
                    steps=[dict(label=f"{t:g}", method="update",
                                args=[views[(t, k)][0], {"annotations[0].text": views[(t, k)][1]}])
                           for t in temperatures])
               for ki, k in enumerate(top_ks)]
    buttons = []
    for ki, k in enumerate(top_ks):
        restyle, cap = views[(temperatures[t0], k)]
        visible = {f"sliders[{j}].visible": j == ki for j in range(len(top_ks))}
        buttons.append(dict(label=f"top-k: {k_label(k)}", method="update",
                            args=[restyle, {**visible, f"sliders[{ki}].active": t0, "annotations[0].text": cap}]))
    fig.update_layout(
        title=dict(text=title), barmode="overlay", template="plotly_white", height=460,
        margin=dict(l=60, r=30, t=120, b=60), showlegend=False,
        xaxis=dict(tickmode="array", tickvals=x, ticktext=names, tickangle=-45),
        yaxis=dict(title="probability", range=[0, 1.08]),
        sliders=sliders,
        updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.17,
                          xanchor="left", yanchor="top", showactive=True)],
        annotations=[dict(text=caption, x=1, y=1.0, xref="paper", yref="paper", xanchor="right",
                          yanchor="top", align="right", showarrow=False, font=dict(size=12))],
    )
    return fig


setup_plotly()


def _piecewise_linear(xs, ys):
    """x -> y through the points ``(0, 0), (xs[i], ys[i])``, continued past the last with the mean slope."""
    import numpy as np

    xs, ys = np.concatenate([[0.0], xs]), np.concatenate([[0.0], ys])
    slope = ys[-1] / xs[-1] if xs[-1] else 1.0

    def f(x):
        x = np.asarray(x, dtype=float)
        return np.where(x > xs[-1], ys[-1] + (x - xs[-1]) * slope, np.interp(x, xs, ys))

    return f


def plot_losses(history, ax=None, title: str = "Loss during training"):
    """A TrainingHistory's training and validation loss against epochs, with what was seen on top.

    The top axis is a second scale of the same x axis (``secondary_xaxis``):
    each epoch mark is labelled with the tokens (or examples) trained on by
    then. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if not len(history):
        raise ValueError("the history has no evaluations to plot")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    ax.plot(history.epochs, history.train_losses, marker=".", label="training loss")
    ax.plot(history.epochs, history.val_losses, marker=".", linestyle="--", label="validation loss")
    ax.set_xlabel("epochs")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend(loc="upper right")
    to_seen = _piecewise_linear(history.epochs, history.seen)
    to_epochs = _piecewise_linear(history.seen, history.epochs)
    top = ax.secondary_xaxis("top", functions=(to_seen, to_epochs))
    top.set_xlabel(f"{history.unit} seen")
    fig.tight_layout()
    return fig
