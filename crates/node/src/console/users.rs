//! User management in the browser, for administrators: the console's accounts, adding one,
//! disabling one and resetting a password, under the same rules as `detente user add`
//! (login names, roles, interface languages, [`auth::hash_password`]'s length limits).
//!
//! Every change is CSRF-checked, goes to the store before it is shown, ends the account's
//! sessions (the store's `put_user` does) and is written to the audit log. A disabled
//! account keeps its row (the audit log names it) with [`DISABLED_PASSWORD_MARK`] for a
//! password, which no password verifies against and which the OpenID Connect sign-in does
//! not take over; resetting its password enables it again.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use detente_store::console::UserRow;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::{self, Role, ROLES};
use super::html::{csrf_input, live_page};
use super::i18n::LANGUAGES;
use super::oidc::OIDC_PASSWORD_MARK;
use super::pages::{html, language_name, refuse, time_markup, tr};
use super::{audit, Operator, Source};
use crate::{now_ms, Shared};

type Shr = State<Arc<Shared>>;

/// The password of a disabled account: not a PHC string, so nothing verifies against it.
pub const DISABLED_PASSWORD_MARK: &str = "!disabled";

/// The user form as posted (one form per action; unused fields stay empty).
#[derive(Deserialize, Default)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    /// `add`, `disable` or `reset`.
    #[serde(default)]
    action: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    lang: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_again: String,
}

/// Problems with a posted form, in form order: the field's element id and the text key.
type Problems = Vec<(&'static str, &'static str)>;

/// How an account signs in, as the list shows it.
fn state_key(u: &UserRow) -> &'static str {
    match u.password_hash.as_str() {
        DISABLED_PASSWORD_MARK => "user-state-disabled",
        OIDC_PASSWORD_MARK => "user-state-oidc",
        _ => "user-state-active",
    }
}

/// The password rules of [`auth::hash_password`], checked before its argon2 cost.
fn password_problem(password: &str, again: &str) -> Option<&'static str> {
    if password.chars().count() < auth::PASSWORD_CHARS_MIN {
        Some("user-password-short")
    } else if password.len() > auth::PASSWORD_BYTES_MAX {
        Some("user-password-long")
    } else if password != again {
        Some("user-password-differs")
    } else {
        None
    }
}

/// What is wrong with an `add` form, every problem at once, in form order.
fn add_problems(form: &UserForm, taken: bool) -> Problems {
    let mut out = Problems::new();
    if !auth::valid_login(&form.login) {
        out.push(("new-login", "user-login-invalid"));
    } else if taken {
        out.push(("new-login", "user-login-taken"));
    }
    if Role::parse(&form.role).is_none() {
        out.push(("new-role", "user-role-unknown"));
    }
    if !super::i18n::supported(&form.lang) {
        out.push(("new-lang", "language-unknown"));
    }
    if let Some(p) = password_problem(&form.password, &form.password_again) {
        let field = if p == "user-password-differs" {
            "new-password-again"
        } else {
            "new-password"
        };
        out.push((field, p));
    }
    out
}

/// What is wrong with a `reset` form: the account must exist and sign in with a password.
fn reset_problems(form: &UserForm, account: Option<&UserRow>) -> Problems {
    let mut out = Problems::new();
    match account {
        None => out.push(("reset-login", "user-unknown")),
        Some(u) if u.password_hash == OIDC_PASSWORD_MARK => {
            out.push(("reset-login", "user-reset-oidc"))
        }
        Some(_) => {}
    }
    if let Some(p) = password_problem(&form.password, &form.password_again) {
        let field = if p == "user-password-differs" {
            "reset-password-again"
        } else {
            "reset-password"
        };
        out.push((field, p));
    }
    out
}

pub async fn page(State(shared): Shr, op: Operator) -> Response {
    if !op.role.can_admin() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-admin");
    }
    users_page(
        &shared,
        &op,
        StatusCode::OK,
        &Problems::new(),
        &UserForm::default(),
    )
    .await
}

/// The list and the two forms; `problems` are shown next to their fields, `form` refills
/// what was typed (never a password).
async fn users_page(
    shared: &Shared,
    op: &Operator,
    status: StatusCode,
    problems: &Problems,
    form: &UserForm,
) -> Response {
    let rows = shared.store.users().await.unwrap_or_default();
    let main = html! {
        (list_html(shared, op, &rows))
        (add_html(shared, op, problems, form))
        (reset_html(shared, op, problems, form, &rows))
        p.hint { (tr(shared, op, "users-hint")) " " code { "detente user add --dir DIR --name LOGIN --role ROLE" } }
    };
    let title = tr(shared, op, "nav-users");
    html(status, live_page(shared, op, &title, main).await)
}

fn list_html(shared: &Shared, op: &Operator, rows: &[UserRow]) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    html! {
        table #users {
            caption { (t("users-caption")) }
            thead { tr {
                @for k in ["audit-login", "user-role", "language", "user-created", "user-state", "user-actions"] {
                    th scope="col" { (t(k)) }
                }
            } }
            tbody {
                @for u in rows {
                    tr data-login=(u.login) {
                        th scope="row" translate="no" { (u.login) }
                        td { (t(&format!("role-{}", u.role))) }
                        td { (language_name(shared, &op.lang, &u.lang)) }
                        td { (time_markup(shared, op, u.created_at_ms)) }
                        td.user-state { (t(state_key(u))) }
                        td {
                            @if u.login != op.login && u.password_hash != DISABLED_PASSWORD_MARK {
                                form.inline method="post" action="/console/users" {
                                    (csrf_input(op))
                                    input type="hidden" name="action" value="disable";
                                    input type="hidden" name="login" value=(u.login);
                                    button type="submit" id={ "disable-" (u.login) }
                                        aria-label={ (t("user-disable")) " " (u.login) } { (t("user-disable")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A field's error, next to it, and the attributes that tie the two together.
fn problem(problems: &Problems, field: &str) -> Option<&'static str> {
    problems.iter().find(|(f, _)| *f == field).map(|(_, k)| *k)
}

fn error_html(shared: &Shared, op: &Operator, problems: &Problems, field: &str) -> Markup {
    html! {
        @if let Some(key) = problem(problems, field) {
            span.field-error id={ "err-" (field) } role="alert" { (tr(shared, op, key)) }
        }
    }
}

fn add_html(shared: &Shared, op: &Operator, problems: &Problems, form: &UserForm) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let adding = form.action == "add";
    let invalid = |f: &str| problem(problems, f).map(|_| "true");
    let described = |f: &str| problem(problems, f).map(|_| format!("err-{f}"));
    html! {
        section aria-labelledby="user-add-title" {
            h2 #user-add-title { (t("user-add-title")) }
            form.user-add method="post" action="/console/users" {
                (csrf_input(op))
                input type="hidden" name="action" value="add";
                p {
                    label for="new-login" { (t("audit-login")) }
                    input #new-login name="login" maxlength=(auth::LOGIN_BYTES_MAX) required
                        autocomplete="off" value=[adding.then_some(form.login.as_str())]
                        aria-invalid=[invalid("new-login")] aria-describedby=[described("new-login")];
                    (error_html(shared, op, problems, "new-login"))
                }
                p {
                    label for="new-role" { (t("user-role")) }
                    select #new-role name="role" aria-invalid=[invalid("new-role")]
                        aria-describedby=[described("new-role")] {
                        @for r in ROLES {
                            option value=(r.name()) selected[adding && form.role == r.name()] {
                                (t(&format!("role-{}", r.name())))
                            }
                        }
                    }
                    (error_html(shared, op, problems, "new-role"))
                }
                p {
                    label for="new-lang" { (t("language")) }
                    select #new-lang name="lang" aria-invalid=[invalid("new-lang")]
                        aria-describedby=[described("new-lang")] {
                        @for (code, _) in LANGUAGES {
                            option value=(code) selected[adding && form.lang == *code] {
                                (language_name(shared, &op.lang, code))
                            }
                        }
                    }
                    (error_html(shared, op, problems, "new-lang"))
                }
                (password_fields(shared, op, problems, "new"))
                p { button type="submit" #user-add { (t("user-add")) } }
            }
        }
    }
}

/// A new password and its repetition, with the rule beside.
fn password_fields(shared: &Shared, op: &Operator, problems: &Problems, prefix: &str) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let (first, again) = (
        format!("{prefix}-password"),
        format!("{prefix}-password-again"),
    );
    let rule_id = format!("{prefix}-password-rule");
    let described = |f: &str| match problem(problems, f) {
        Some(_) => format!("{rule_id} err-{f}"),
        None => rule_id.clone(),
    };
    html! {
        p {
            label for=(first) { (t("user-password")) }
            input id=(first) name="password" type="password" autocomplete="new-password" required
                maxlength=(auth::PASSWORD_BYTES_MAX) aria-invalid=[problem(problems, &first).map(|_| "true")]
                aria-describedby=(described(&first));
            span.hint id=(rule_id) { (super::pages::tr_with(shared, op, "user-password-rule",
                &[("min", auth::PASSWORD_CHARS_MIN.to_string())])) }
            (error_html(shared, op, problems, &first))
        }
        p {
            label for=(again) { (t("user-password-again")) }
            input id=(again) name="password_again" type="password" autocomplete="new-password"
                required maxlength=(auth::PASSWORD_BYTES_MAX)
                aria-invalid=[problem(problems, &again).map(|_| "true")]
                aria-describedby=[problem(problems, &again).map(|_| format!("err-{again}"))];
            (error_html(shared, op, problems, &again))
        }
    }
}

fn reset_html(
    shared: &Shared,
    op: &Operator,
    problems: &Problems,
    form: &UserForm,
    rows: &[UserRow],
) -> Markup {
    let t = |k: &str| tr(shared, op, k);
    let resetting = form.action == "reset";
    html! {
        section aria-labelledby="user-reset-title" {
            h2 #user-reset-title { (t("user-reset-title")) }
            p.hint { (t("user-reset-hint")) }
            form.user-reset method="post" action="/console/users" {
                (csrf_input(op))
                input type="hidden" name="action" value="reset";
                p {
                    label for="reset-login" { (t("audit-login")) }
                    select #reset-login name="login"
                        aria-invalid=[problem(problems, "reset-login").map(|_| "true")]
                        aria-describedby=[problem(problems, "reset-login").map(|_| "err-reset-login")] {
                        @for u in rows.iter().filter(|u| u.password_hash != OIDC_PASSWORD_MARK) {
                            option value=(u.login) translate="no"
                                selected[resetting && form.login == u.login] { (u.login) }
                        }
                    }
                    (error_html(shared, op, problems, "reset-login"))
                }
                (password_fields(shared, op, problems, "reset"))
                p { button type="submit" #user-reset { (t("user-reset")) } }
            }
        }
    }
}

pub async fn post(
    State(shared): Shr,
    op: Operator,
    Source(source): Source,
    Form(form): Form<UserForm>,
) -> Response {
    if !op.csrf_ok(&form.csrf) {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "csrf-refused");
    }
    if !op.role.can_admin() {
        return refuse(&shared, &op, StatusCode::FORBIDDEN, "role-cannot-admin");
    }
    let account = if auth::valid_login(&form.login) {
        match shared.store.user(&form.login).await {
            Ok(account) => account,
            Err(_) => return unavailable(&shared, &op),
        }
    } else {
        None
    };
    match form.action.as_str() {
        "add" => add(&shared, &op, source, form, account.is_some()).await,
        "reset" => reset(&shared, &op, source, form, account).await,
        "disable" => disable(&shared, &op, source, account).await,
        _ => refuse(&shared, &op, StatusCode::BAD_REQUEST, "user-action-unknown"),
    }
}

fn unavailable(shared: &Shared, op: &Operator) -> Response {
    refuse(
        shared,
        op,
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
    )
}

/// Hash the password through the node's bounded password gate (argon2 is 19 MiB a run).
async fn hash(shared: &Shared, password: String) -> Option<String> {
    let hashed = shared
        .console
        .passwords
        .run(move || auth::hash_password(&password))
        .await;
    hashed.ok()?.ok()
}

/// Store the account (ending its sessions), then audit it; the list shows it after.
async fn store_and_audit(
    shared: &Shared,
    op: &Operator,
    source: std::net::IpAddr,
    row: &UserRow,
    action: &str,
) -> Response {
    if shared.store.put_user(row).await.is_err() {
        return unavailable(shared, op);
    }
    let detail = format!("{} {}", row.login, row.role);
    audit(shared, &op.login, action, &detail, source).await;
    Redirect::to("/console/users").into_response()
}

async fn add(
    shared: &Shared,
    op: &Operator,
    source: std::net::IpAddr,
    form: UserForm,
    taken: bool,
) -> Response {
    let problems = add_problems(&form, taken);
    if !problems.is_empty() {
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        return users_page(shared, op, status, &problems, &form).await;
    }
    let Some(password_hash) = hash(shared, form.password.clone()).await else {
        return refuse(shared, op, StatusCode::SERVICE_UNAVAILABLE, "user-busy");
    };
    let row = UserRow {
        login: form.login.clone(),
        role: form.role.clone(),
        password_hash,
        lang: form.lang.clone(),
        tz: String::new(),
        created_at_ms: now_ms() as i64,
    };
    store_and_audit(shared, op, source, &row, "user-add").await
}

async fn reset(
    shared: &Shared,
    op: &Operator,
    source: std::net::IpAddr,
    form: UserForm,
    account: Option<UserRow>,
) -> Response {
    let problems = reset_problems(&form, account.as_ref());
    let Some(mut row) = account.filter(|_| problems.is_empty()) else {
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        return users_page(shared, op, status, &problems, &form).await;
    };
    let Some(password_hash) = hash(shared, form.password.clone()).await else {
        return refuse(shared, op, StatusCode::SERVICE_UNAVAILABLE, "user-busy");
    };
    row.password_hash = password_hash;
    store_and_audit(shared, op, source, &row, "user-password-reset").await
}

async fn disable(
    shared: &Shared,
    op: &Operator,
    source: std::net::IpAddr,
    account: Option<UserRow>,
) -> Response {
    let Some(mut row) = account else {
        return refuse(shared, op, StatusCode::NOT_FOUND, "user-unknown");
    };
    // An administrator cannot lock themselves out (another administrator can).
    if row.login == op.login {
        return refuse(shared, op, StatusCode::CONFLICT, "user-disable-self");
    }
    if row.password_hash == DISABLED_PASSWORD_MARK {
        return Redirect::to("/console/users").into_response();
    }
    row.password_hash = DISABLED_PASSWORD_MARK.to_string();
    store_and_audit(shared, op, source, &row, "user-disable").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(login: &str, role: &str, lang: &str, password: &str, again: &str) -> UserForm {
        UserForm {
            action: "add".into(),
            login: login.into(),
            role: role.into(),
            lang: lang.into(),
            password: password.into(),
            password_again: again.into(),
            ..UserForm::default()
        }
    }

    #[test]
    fn every_problem_of_an_added_account_is_named_in_form_order() {
        let bad = form("no spaces", "king", "fr", "short", "short");
        assert_eq!(
            add_problems(&bad, false),
            vec![
                ("new-login", "user-login-invalid"),
                ("new-role", "user-role-unknown"),
                ("new-lang", "language-unknown"),
                ("new-password", "user-password-short"),
            ]
        );
        let differs = form("duty2", "watch", "en", "long enough", "long enougH");
        assert_eq!(
            add_problems(&differs, true),
            vec![
                ("new-login", "user-login-taken"),
                ("new-password-again", "user-password-differs")
            ]
        );
        let long = "x".repeat(auth::PASSWORD_BYTES_MAX + 1);
        assert_eq!(password_problem(&long, &long), Some("user-password-long"));
        assert!(add_problems(
            &form("duty2", "watch", "zh-CN", "long enough", "long enough"),
            false
        )
        .is_empty());
    }

    #[test]
    fn the_marks_are_not_passwords() {
        assert!(!auth::verify_password("!disabled", DISABLED_PASSWORD_MARK));
        assert!(!auth::verify_password("", DISABLED_PASSWORD_MARK));
    }
}
