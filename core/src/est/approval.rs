//! Manual approval of deferred enrollments (`keygrid est pending|approve|reject`).
//!
//! A label listed in `est.manual_approval` answers a first `simpleenroll` with 202 and
//! records the request (by the hash of label and CSR). An operator approves or rejects
//! it; the client repeats the same request and then gets its certificate (policy is
//! checked again at that point) or a 403. Each decision is an audit event.

use time::OffsetDateTime;

use crate::store::{EventRecord, PendingEnrollment, Store, StoreError};

/// Deferred enrollments still waiting.
pub fn pending(store: &Store) -> Result<Vec<PendingEnrollment>, StoreError> {
    store.est_pending_list()
}

/// Approves (`approve`) or rejects a waiting enrollment and records who decided.
pub fn decide(
    store: &Store,
    id: &str,
    approve: bool,
    operator: &str,
) -> Result<PendingEnrollment, StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let to = if approve { "approved" } else { "rejected" };
    store.est_set_state(id, "pending", to, now)?;
    let p = store
        .est_pending(id)?
        .ok_or_else(|| StoreError::NotFound(format!("enrollment {id}")))?;
    store.record_event(&EventRecord {
        at: now,
        kind: format!("est_enrollment_{to}"),
        actor: operator.to_string(),
        subject: p.subject.clone(),
        rule: "manual-approval".into(),
        detail: format!(
            "EST {} enrollment {id} requested by {}",
            p.label, p.requester
        ),
    })?;
    Ok(p)
}
