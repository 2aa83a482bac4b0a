"""The VLM stage: a vision-language model behind any OpenAI-compatible chat endpoint re-ranks the top
hits of a search and explains why each matches (docs/vlm.md).

    vlm = Vlm(settings)                          # off (CLIP order back) unless CLIPSEARCH_VLM_URL is set
    outcome = vlm.rerank("red bike", results)    # never raises for the VLM's sake
    results = outcome.apply(results); outcome.summary(); outcome.verdict(id).vlm_score
    for piece in vlm.explain("red bike", results[0]): ...

Modules: prompts (every prompt, versioned), thumbnails, parse (tolerant reading of answers), client
(HTTP), cache, metrics, stage (what the next two share), rerank, explain, service (`Vlm`).
"""

from indexer.vlm.client import VlmError
from indexer.vlm.metrics import VlmMetrics
from indexer.vlm.prompts import PROMPT_VERSION
from indexer.vlm.rerank import HitVerdict, RerankOutcome
from indexer.vlm.service import Vlm
from indexer.vlm.stage import Query

__all__ = ["PROMPT_VERSION", "HitVerdict", "Query", "RerankOutcome", "Vlm", "VlmError", "VlmMetrics"]
