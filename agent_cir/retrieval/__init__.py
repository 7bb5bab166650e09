"""Retrieval over faiss: the search engine every path uses, and the no-LLM search of an index."""

from agent_cir.retrieval.engine import SearchEngine, apply_search_settings, composite_query
from agent_cir.retrieval.index_search import search_index

__all__ = ["SearchEngine", "apply_search_settings", "composite_query", "search_index"]
