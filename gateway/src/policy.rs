//! What a request gets: its upstreams, budgets, retries and hedging. The flags give the
//! policy of every request; a `--config` file may give a model a policy of its own, by the
//! `model` its JSON body names, and is read again on SIGHUP.
//!
//! ```toml
//! [models."llama-3.1-70b"]
//! upstreams = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
//! total = "120s"
//! first_frame = "20s"
//! idle = "10s"
//! retries = 1
//! hedge_after = "3s"
//! heartbeat = "15s"
//! ```
//!
//! A table may leave out any key: what it leaves out comes from the flags. Durations are in
//! the flags' grammar (`off` for `first_frame`, `idle`, `hedge_after` and `heartbeat`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tower_stream_deadline::{ReleaseUnpolled, StreamDeadlineLayer};

use crate::config::{Budget, Flags};
use crate::duration;
use crate::pool::{Members, Pool};
use crate::upstream_url::Upstream;

/// The policy of the requests of one model, or of every other request.
pub struct Policy {
    /// The model this policy is for; `None` for the flags' policy.
    pub model: Option<String>,
    pub pool: Arc<Pool>,
    pub total: Duration,
    pub first_frame: Budget,
    pub idle: Budget,
    pub retries: usize,
    /// When set, a request whose first token is late by this much gets another attempt at
    /// another upstream while the first goes on; hedges count against `retries`.
    pub hedge_after: Option<Duration>,
    /// How often a streamed request still waiting for its answer gets an SSE comment, with
    /// the response head sent by the gateway; `None` for none.
    pub heartbeat: Option<Duration>,
    pub layer: StreamDeadlineLayer<ReleaseUnpolled>,
}

/// Something for the flags' policy, and one for each model of the `--config` file: the
/// policies themselves, or what is built from each once per load.
pub struct ByModel<T> {
    default: T,
    by_model: HashMap<String, T>,
}

/// The flags' policy, and one per model of the `--config` file.
pub type Policies = ByModel<Arc<Policy>>;

impl<T> ByModel<T> {
    /// The one for a request that names `model` (or none).
    pub fn for_model(&self, model: Option<&str>) -> &T {
        model
            .and_then(|model| self.by_model.get(model))
            .unwrap_or(&self.default)
    }

    /// The models with a policy of their own.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.by_model.keys().map(String::as_str)
    }

    /// Every one, the flags' first.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.default).chain(self.by_model.values())
    }

    /// `build` of each, for the same models.
    pub fn map<U>(&self, mut build: impl FnMut(&T) -> U) -> ByModel<U> {
        ByModel {
            default: build(&self.default),
            by_model: self
                .by_model
                .iter()
                .map(|(model, t)| (model.clone(), build(t)))
                .collect(),
        }
    }
}

/// A `[models."NAME"]` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Table {
    upstreams: Option<Vec<String>>,
    total: Option<String>,
    first_frame: Option<String>,
    idle: Option<String>,
    retries: Option<usize>,
    hedge_after: Option<String>,
    heartbeat: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    models: BTreeMap<String, Table>,
}

impl Policies {
    /// The policies of `flags`, and of the file `config` names, if any. An error names the
    /// file, and the line or the model and key at fault.
    pub fn load(flags: &Flags, members: &Members) -> Result<Policies, String> {
        let default = Arc::new(policy(flags, members, None, Table::default())?);
        let mut by_model = HashMap::new();
        if let Some(path) = &flags.config {
            for (model, table) in read(path)?.models {
                let policy = policy(flags, members, Some(&model), table)
                    .map_err(|why| format!("{}: [models.{model:?}]: {why}", path.display()))?;
                by_model.insert(model, Arc::new(policy));
            }
        }
        Ok(Policies { default, by_model })
    }

    /// Whether any policy names an https:// upstream (the client then needs trusted roots).
    pub fn any_https(&self) -> bool {
        self.all()
            .any(|policy| policy.pool.members().iter().any(|m| m.upstream().https))
    }

    /// Whether any policy sends heartbeats (then every request is raced against them until
    /// its policy is known).
    pub fn any_heartbeat(&self) -> bool {
        self.all().any(|policy| policy.heartbeat.is_some())
    }
}

fn read(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    // toml's message names the line and column, and quotes the line.
    toml::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))
}

fn policy(
    flags: &Flags,
    members: &Members,
    model: Option<&str>,
    table: Table,
) -> Result<Policy, String> {
    let upstreams = match &table.upstreams {
        None => flags.upstreams.clone(),
        Some(urls) if urls.is_empty() => return Err("`upstreams` is empty".to_owned()),
        Some(urls) => urls
            .iter()
            .map(|url| Upstream::parse(url).map_err(|why| format!("an upstream {why}")))
            .collect::<Result<_, _>>()?,
    };
    let pool =
        Pool::new(upstreams.iter().map(|u| members.get(u)).collect()).ok_or("no upstream")?;
    let key = |name: &str, text: &Option<String>, parse: fn(&str) -> Result<Budget, String>| {
        text.as_deref()
            .map(|text| parse(text).map_err(|why| format!("`{name}`: {why}")))
            .transpose()
    };
    let required = |text: &str| duration::parse(text).map(|d| Budget(Some(d)));
    let optional = |text: &str| duration::parse_optional(text).map(Budget);
    let total = key("total", &table.total, required)?
        .and_then(|b| b.0)
        .unwrap_or(flags.total);
    let first_frame =
        key("first_frame", &table.first_frame, optional)?.unwrap_or(flags.first_frame);
    let idle = key("idle", &table.idle, optional)?.unwrap_or(flags.idle);
    let hedge_after =
        key("hedge_after", &table.hedge_after, optional)?.map_or(flags.hedge_after.0, |b| b.0);
    let heartbeat =
        key("heartbeat", &table.heartbeat, optional)?.map_or(flags.heartbeat.0, |b| b.0);
    if heartbeat == Some(Duration::ZERO) {
        return Err("`heartbeat` must be longer than 0".to_owned());
    }
    let retries = table.retries.unwrap_or(flags.retries);
    Ok(Policy {
        model: model.map(str::to_owned),
        pool: Arc::new(pool),
        layer: crate::config::deadline_layer(total, first_frame, idle),
        total,
        first_frame,
        idle,
        retries,
        hedge_after,
        heartbeat,
    })
}
