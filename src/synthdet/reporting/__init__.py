"""Reporting: what people read and what organisers receive — the self-contained HTML reports (Jinja2 templates,
charts) and the MediaEval submission writers and checkers."""
