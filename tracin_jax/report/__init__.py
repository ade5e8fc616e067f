"""Outputs of scoring: JSONL rows and a self-contained HTML report."""
from tracin_jax.report.html import render_html, write_html
from tracin_jax.report.jsonl import jsonl_rows, special_share, write_jsonl

__all__ = ["jsonl_rows", "render_html", "special_share", "write_html", "write_jsonl"]
