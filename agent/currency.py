"""Currency codes as the Push API takes them (``CurrencyID``): 1-10 capital letters, such
as ``CAD``. One form for the station's default (``controller.currency``, checked when the
config is loaded) and a record's own (``CUR``, checked when it is mapped)."""

from __future__ import annotations

import re

CURRENCY_CODE = re.compile(r"[A-Z]{1,10}")
