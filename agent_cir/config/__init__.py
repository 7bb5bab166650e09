"""Recipe schema: one YAML file configures every stage. Validated with pydantic; errors name the key and file.

One job a module:
- ``base``: the strict base model (unknown keys are errors) and ``ConfigError``;
- ``names``: the names pluggable parts may have (judges, aggregations, benchmarks) and the validated name type
  the schema builds from each registry (encoder backends straight from ``agent_cir.encoders.registry``);
- ``models``: the encoder and chat-model specs (``encoder:``, ``models:``);
- ``stages``: one section per stage (caption ... rerank, cache), each owned by the module that consumes it;
- ``recipe``: ``Recipe`` (sections, ``by_dataset``, ``published``), redaction, ``recipe_needs``;
- ``loading``: ``load_recipe`` (packaged names, bounded YAML, overrides).

Import the names from here (``from agent_cir.config import Recipe, load_recipe``); the modules are the layout.
"""

from agent_cir.config.base import ConfigError, _Strict
from agent_cir.config.loading import (
    MAX_RECIPE_BYTES,
    MAX_YAML_NODES,
    available_recipes,
    load_recipe,
    load_yaml_bounded,
    recipes_dir,
)
from agent_cir.config.models import EncoderBackend, EncoderConfig, ModelConfig, NormalizeConstants
from agent_cir.config.names import (
    AGGREGATION_METHODS,
    BENCHMARK_NAMES,
    JUDGE_METHODS,
    AggregationMethod,
    BenchmarkName,
    JudgeMethod,
    RegistryMismatchError,
    check_registry,
    did_you_mean,
    registered_name,
    unknown_name_message,
)
from agent_cir.config.recipe import (
    SECRET_KEYS,
    CircoOptions,
    PublishedResult,
    Recipe,
    deep_merge,
    recipe_from_dict,
    recipe_needs,
    redact_secrets,
    redacted_recipe_dump,
)
from agent_cir.config.stages import (
    MAX_GRID_CELL_SIZE,
    MAX_GRID_PIXELS,
    MODEL_STAGES,
    CacheConfig,
    CaptionConfig,
    GalleryCaptionsConfig,
    GridConfig,
    ImagineConfig,
    MultigrainConfig,
    OneStageConfig,
    PredicatesConfig,
    RefineConfig,
    RerankConfig,
    RetrieveConfig,
    RewriteConfig,
    SessionConfig,
    VerifyConfig,
)
from agent_cir.redact import REDACTED

__all__ = [
    "AGGREGATION_METHODS",
    "BENCHMARK_NAMES",
    "JUDGE_METHODS",
    "MAX_GRID_CELL_SIZE",
    "MAX_GRID_PIXELS",
    "MAX_RECIPE_BYTES",
    "MAX_YAML_NODES",
    "MODEL_STAGES",
    "REDACTED",
    "SECRET_KEYS",
    "AggregationMethod",
    "BenchmarkName",
    "CacheConfig",
    "CaptionConfig",
    "CircoOptions",
    "ConfigError",
    "EncoderBackend",
    "EncoderConfig",
    "GalleryCaptionsConfig",
    "GridConfig",
    "ImagineConfig",
    "JudgeMethod",
    "ModelConfig",
    "MultigrainConfig",
    "NormalizeConstants",
    "OneStageConfig",
    "PredicatesConfig",
    "PublishedResult",
    "Recipe",
    "RefineConfig",
    "RegistryMismatchError",
    "RerankConfig",
    "RetrieveConfig",
    "RewriteConfig",
    "SessionConfig",
    "VerifyConfig",
    "_Strict",
    "available_recipes",
    "check_registry",
    "deep_merge",
    "did_you_mean",
    "load_recipe",
    "load_yaml_bounded",
    "recipe_from_dict",
    "recipe_needs",
    "recipes_dir",
    "redact_secrets",
    "redacted_recipe_dump",
    "registered_name",
    "unknown_name_message",
]
