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

import sys

import torch

__all__ = [
    "setup_plotly",
    "attention_explorer",
    "model_attention_explorer",
    "attention_explorer_widget",
]

_BLUES = "Blues"


def setup_plotly() -> None:
    """Render plotly figures as JSON plus a small HTML stub that uses the page's plotly.js."""
    import plotly.io as pio

    if "google.colab" in sys.modules:
        return  # Colab's own renderer works as it is
    pio.renderers["notebook"].global_init = False  # nothing but the figure in each output
    pio.renderers.default = "plotly_mimetype+notebook"


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
        cols = min(n_heads, 4)
        rows = -(-n_heads // cols)
        labels = head_labels or [f"head {h + 1}" for h in range(n_heads)]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels,
                            horizontal_spacing=0.06, vertical_spacing=0.12)
        for h in range(n_heads):
            r, c = divmod(h, cols)
            fig.add_trace(go.Heatmap(
                z=_round(w[0, h]), zmin=0, zmax=1, colorscale=_BLUES, showscale=(h == 0),
                colorbar=dict(title="weight", len=0.9),
                hovertemplate=f"{labels[h]}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}"
                              "<extra></extra>"), row=r + 1, col=c + 1)
            fig.update_xaxes(ticks, row=r + 1, col=c + 1, tickangle=-60)
            fig.update_yaxes(ticks, row=r + 1, col=c + 1, autorange="reversed",
                             showticklabels=(c == 0))
        if n_layers > 1:
            steps = [dict(label=str(layer + 1), method="restyle",
                          args=[{"z": [_round(w[layer, h]) for h in range(n_heads)]}])
                     for layer in range(n_layers)]
            fig.update_layout(sliders=[dict(active=0, steps=steps, pad=dict(t=50),
                                            currentvalue=dict(prefix="layer: "))])
    height = 420 if single else 260 * (-(-n_heads // min(n_heads, 4))) + 160
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
    """A text box and the model's attention explorer for whatever sentence is typed (needs a kernel)."""
    import ipywidgets as widgets
    from IPython.display import display

    box = widgets.Text(value=text, description="sentence:", continuous_update=False,
                       layout=widgets.Layout(width="90%"))
    out = widgets.Output()

    def redraw(change=None):
        out.clear_output(wait=True)
        with out:
            display(model_attention_explorer(model, tokenizer, box.value))

    box.observe(redraw, names="value")
    redraw()
    return widgets.VBox([box, out])


setup_plotly()
