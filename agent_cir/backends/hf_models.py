"""Local transformers chat models (``hf:`` text LLMs, ``hf-vlm:`` vision-language models) as LangChain models:
how each kind renders a conversation (chat template) and encodes a batch of them.

LangChain's HuggingFace wrapper renders messages to plain text and drops images, so the VLM needs its own
small ``BaseChatModel``: it reads standard LangChain image blocks (OpenAI-style ``image_url`` with a data
URL, or the v1 ``{"type": "image", "base64": ...}`` form), renders the conversation with the processor's
chat template and calls ``generate``. The text model uses the tokenizer's chat template the same way, which
works offline for local folders and GGUF files alike (``from_pretrained(dir, gguf_file=name)``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from langchain_core.messages import BaseMessage

from agent_cir.backends.errors import LocalModelError
from agent_cir.backends.hf_chat_model import LocalTransformersChat
from agent_cir.backends.hf_inputs import ROLE_OF, RenderedConversation, decode_image_block, is_image_block, text_of


class TransformersChatModel(LocalTransformersChat):
    """``hf:`` a local causal LM (folder, hub id in the local cache, or GGUF file) behind its chat template."""

    @property
    def _llm_type(self) -> str:
        return "agent-cir-hf"

    def _conversation(self, messages: list[BaseMessage]) -> list[dict[str, str]]:
        conversation = []
        for message in messages:
            content = message.content
            parts = content if isinstance(content, list) else [content]
            if any(is_image_block(part) for part in parts):
                raise LocalModelError(
                    f"hf:{self.model_path} is a text-only model and was sent an image; "
                    "use an image-capable model (hf-vlm:, openai:, ollama:) for this stage"
                )
            text = "\n".join(t for t in (text_of(part) for part in parts) if t is not None)
            conversation.append({"role": ROLE_OF.get(message.type, "user"), "content": text})
        return conversation

    def _render(self, messages: list[BaseMessage]) -> RenderedConversation:
        tokenizer = self._tokenizer()
        conversation = self._conversation(messages)
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        else:  # a base model without a chat template: a plain transcript still works
            prompt = "".join(f"{turn['role'].capitalize()}: {turn['content']}\n" for turn in conversation)
            prompt += "Assistant:"
        return RenderedConversation(prompt=prompt, images=[])

    def _encode(self, rendered: list[RenderedConversation]) -> Any:
        return self._tokenizer()(
            [item.prompt for item in rendered],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            return_token_type_ids=False,
        )


_PLAIN_PROMPT_PROCESSORS = frozenset({"Blip2Processor", "InstructBlipProcessor"})
"""Processors that place the image tokens themselves (before the text) and whose models were trained on a
plain prompt, not a chat: BLIP-2 (CIReVL's captioner) and InstructBLIP. One image per conversation."""


class TransformersVLMChatModel(LocalTransformersChat):
    """``hf-vlm:`` a local VLM (AutoProcessor + AutoModelForImageTextToText) reading LangChain image blocks.

    Chat VLMs (LLaVA, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL ...) get the processor's chat template; BLIP-2
    and InstructBLIP get the conversation's text as one plain prompt with its single image.
    """

    vision: ClassVar[bool] = True

    @property
    def _llm_type(self) -> str:
        return "agent-cir-hf-vlm"

    def _render(self, messages: list[BaseMessage]) -> RenderedConversation:
        processor = self.weights.processor
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        texts: list[str] = []
        for message in messages:
            content = message.content
            parts = content if isinstance(content, list) else [content]
            blocks: list[dict[str, Any]] = []
            for part in parts:
                if is_image_block(part):
                    images.append(decode_image_block(part))
                    blocks.append({"type": "image"})
                else:
                    text = text_of(part)
                    if text:
                        blocks.append({"type": "text", "text": text})
                        texts.append(text)
            conversation.append({"role": ROLE_OF.get(message.type, "user"), "content": blocks})
        if type(processor).__name__ in _PLAIN_PROMPT_PROCESSORS:
            if len(images) != 1:
                raise LocalModelError(
                    f"hf-vlm:{self.model_path} ({type(processor).__name__}) answers about exactly one image per "
                    f"call; this conversation has {len(images)}"
                )
            return RenderedConversation(prompt="\n".join(texts), images=images)
        if getattr(processor, "chat_template", None) is None:
            raise LocalModelError(
                f"hf-vlm:{self.model_path}: the processor has no chat template; save one with the processor "
                "(processor.chat_template = ...) so that image placeholders are placed correctly"
            )
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return RenderedConversation(prompt=prompt, images=images)

    def _encode(self, rendered: list[RenderedConversation]) -> Any:
        with_images = [item.images for item in rendered if item.images]
        if with_images and len(with_images) != len(rendered):
            raise LocalModelError("a batch mixes conversations with and without images")  # batch_chunks prevents it
        # Nested per conversation: Idefics3 / SmolVLM need it to know whose images are whose; the other
        # processors flatten it in order, which is what their image placeholders expect.
        inputs = self.weights.processor(
            text=[item.prompt for item in rendered],
            images=with_images or None,
            padding=True,
            return_tensors="pt",
        )
        inputs.pop("token_type_ids", None)  # BERT-style tokenizers add it; causal VLMs do not take it
        return inputs
