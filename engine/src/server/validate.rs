//! What this engine accepts, as OpenAI servers answer it: the model it serves, one
//! choice per request, a prompt that leaves room for an answer within the limits. Apart
//! from the handler so that every refusal and its wording are in one place.

use crate::core::check_limits;
use crate::openai::{ApiError, Endpoint, ParsedRequest};
use crate::params::EngineParams;
use crate::words::natural_output_len;

/// Refuses a request meant for another model, or for more than one choice.
pub(super) fn check_target(model: &str, req: &ParsedRequest) -> Result<(), ApiError> {
    if req.model != model {
        return Err(ApiError::new(
            404,
            "NotFoundError",
            format!("The model `{}` does not exist.", req.model),
        )
        .with_code("model_not_found"));
    }
    if req.n > 1 {
        let mut e = ApiError::invalid(
            "n > 1 is not supported by the simulated engine: send one request per choice",
            Some("n"),
        );
        e.code = Some("unsupported_parameter");
        return Err(e);
    }
    Ok(())
}

/// A request's size as the engine will run it.
pub(super) struct Shape {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    /// Tokens it would write if `max_tokens` did not stop it first.
    pub output_len: u32,
    /// Tokens it will write.
    pub target: u32,
}

/// The request's shape, or why the engine cannot run it.
pub(super) fn shape(
    params: &EngineParams,
    seed: u64,
    endpoint: Endpoint,
    req: &ParsedRequest,
) -> Result<Shape, ApiError> {
    let prompt_field = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Responses | Endpoint::Embeddings => "input",
        Endpoint::Completion => "prompt",
    };
    let prompt = req.prompt.tokens();
    let prompt_len = prompt.len();
    if prompt_len == 0 {
        return Err(ApiError::invalid(
            "the prompt must contain at least one token",
            Some(prompt_field),
        ));
    }
    let max_model_len = params.max_model_len as usize;
    let max_tokens = match req.max_tokens {
        Some(m) => m,
        None => max_model_len
            .saturating_sub(prompt_len)
            .min(u32::MAX as usize) as u32,
    };
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your prompt \
                 has {prompt_len} tokens, which leaves no room for the completion."
            ),
            Some(prompt_field),
        ));
    }
    let output_len = if req.ignore_eos {
        max_tokens
    } else {
        natural_output_len(&prompt, seed)
    };
    let target = max_tokens.min(output_len).max(1);
    if let Err(e) = check_limits(params, prompt_len, max_tokens, target) {
        return Err(ApiError::invalid(e.to_string(), None));
    }
    Ok(Shape {
        prompt,
        max_tokens,
        output_len,
        target,
    })
}
