//! Workflow template RPCs: adapters over `crate::templates` (upload, run) and
//! `db::templates` (lists, run updates). The caller's user fills uploaded_by/run_by; the script
//! calls the server back with a scoped session of that user (never the caller's own token), which
//! may update only its own run.

use tonic::Request;

use super::access;
use crate::api::auth::Caller;
use crate::api::state::AppState;
use crate::db;
use crate::db::ownership::Object;
use crate::error::{Error, Result};
use crate::proto as pb;
use crate::templates::CallerCredentials;

fn credentials<T>(request: &Request<T>) -> CallerCredentials {
    CallerCredentials {
        user_id: Caller::of(request).user_id(),
        actor: Caller::of(request).actor(),
    }
}

fn required_id(id: i32, what: &str) -> Result<i32> {
    if id <= 0 {
        return Err(Error::invalid(format!("{what} is required")));
    }
    Ok(id)
}

pub async fn upload_template(
    state: &AppState,
    request: Request<pb::UploadTemplateRequest>,
) -> Result<pb::UploadTemplateResponse> {
    let caller = credentials(&request);
    let r = request.into_inner();
    state
        .templates
        .upload(&state.db, &r.script, r.force, &caller)
        .await
}

pub async fn run_template(
    state: &AppState,
    request: Request<pb::RunTemplateRequest>,
) -> Result<pb::TemplateRun> {
    let caller = credentials(&request);
    let r = request.into_inner();
    let id = required_id(r.workflow_template_id, "workflow_template_id")?;
    state
        .templates
        .run(&state.db, id, &r.param_values_json, &caller)
        .await
}

pub async fn list_templates(
    state: &AppState,
    request: Request<pb::TemplateFilter>,
) -> Result<pb::TemplateList> {
    let f = request.into_inner();
    let templates = state
        .templates
        .list(
            &state.db,
            f.workflow_template_id,
            f.name.as_deref(),
            f.version.as_deref(),
        )
        .await?;
    Ok(pb::TemplateList { templates })
}

pub async fn list_template_runs(
    state: &AppState,
    request: Request<pb::TemplateRunFilter>,
) -> Result<pb::TemplateRunList> {
    let template = request.into_inner().workflow_template_id;
    let runs = db::templates::list_runs(&state.db, template, None).await?;
    Ok(pb::TemplateRunList { runs })
}

pub async fn update_template_run(
    state: &AppState,
    request: Request<pb::UpdateTemplateRunRequest>,
) -> Result<pb::Ack> {
    let caller = Caller::of(&request);
    let actor = access::actor(&request);
    let r = request.into_inner();
    let id = required_id(r.template_run_id, "template_run_id")?;
    if let Caller::User(u) = &caller
        && u.scoped
        && u.scoped_run_id != Some(id)
    {
        return Err(Error::permission_denied(
            "a template script's token may update only its own run (TASKQUEUE_TEMPLATE_RUN_ID)",
        ));
    }
    access::owned(state, actor, Object::TemplateRun(id)).await?;
    if r.workflow_id.is_none() && r.error_message.is_none() {
        return Err(Error::invalid(
            "nothing to update: give workflow_id and/or error_message",
        ));
    }
    if let Some(w) = r.workflow_id {
        required_id(w, "workflow_id (when given)")?;
    }
    db::templates::update_run(&state.db, id, r.workflow_id, r.error_message.as_deref()).await?;
    Ok(pb::Ack { success: true })
}

pub async fn delete_template_run(
    state: &AppState,
    request: Request<pb::DeleteTemplateRunRequest>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let id = required_id(request.into_inner().template_run_id, "template_run_id")?;
    access::owned(state, actor, Object::TemplateRun(id)).await?;
    db::templates::delete_run(&state.db, id).await?;
    Ok(pb::Ack { success: true })
}
