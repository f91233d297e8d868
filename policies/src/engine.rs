//! The policy engine: implements [`crate::PolicyHandler`] by decoding each event, looking up the
//! facts its rule needs inside the runtime's transaction, running the pure rule, and appending
//! the result with deterministic ids so that a redelivery changes nothing.

use uuid::Uuid;

/// The namespace of every id Lifeline derives (UUIDv5) for exactly-once effects.
pub const LIFELINE_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6c69_6e65_8000_0000_0000_0001);

/// A UUIDv5 of `name` in Lifeline's namespace.
pub fn deterministic_id(name: &str) -> Uuid {
    Uuid::new_v5(&LIFELINE_NAMESPACE, name.as_bytes())
}

/// The id of the task policy `policy` creates for `procedure` because of event `source`:
/// UUIDv5 of `"<policy>/<source>/<procedure>"`.
pub fn task_id(
    policy: &str,
    source: Uuid,
    procedure: lifeline_model::procedure::ProcedureId,
) -> Uuid {
    deterministic_id(&format!("{policy}/{source}/{procedure}"))
}
