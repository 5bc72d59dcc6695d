//! Host facts -> what to change: which file, in which way, and how containerd picks
//! it up. No I/O: the effects layer executes a [`Plan`].

use std::path::{Path, PathBuf};

use crate::distro::{
    CONTAINERD_CONFIG, Distro, HostFacts, K0S_DROPIN_DIR, K0S_RENDERED_CRI, K3S_CONTAINERD_DIR,
    MICROK8S_TEMPLATE, RKE2_CONTAINERD_DIR, Restart,
};
use crate::doc::parse;
use crate::dropin::{add_dropin, remove_dropin};
use crate::edit::{
    Backup, Edit, Entry, Removal, add_runtime, remove_entry, remove_runtime, resolve_entry,
};
use crate::error::{Error, Result};
use crate::schema::Schema;
use crate::spec::{HandlerName, RuntimeSpec, SystemdCgroupMode};
use crate::template::{add_to_template, remove_from_template};
use crate::version::ContainerdVersion;

/// Which file we edit, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigTarget {
    /// toml_edit on the whole main config (also MicroK8s's template, which is TOML
    /// with `${VAR}` placeholders only inside strings, so it parses and keeps them).
    MainFile { path: PathBuf },
    /// Our block appended to a k3s/RKE2 Go template; `rendered` is the config.toml
    /// the distro renders from it (read for ownership and runc's cgroup driver).
    GoTemplate {
        path: PathBuf,
        schema: Schema,
        rendered: PathBuf,
    },
    /// A drop-in file that is ours as a whole. `effective` is the config whose runc
    /// entry and runtimes the drop-in is merged with.
    DropIn {
        path: PathBuf,
        schema: Schema,
        effective: PathBuf,
    },
}

impl ConfigTarget {
    pub fn path(&self) -> &Path {
        match self {
            ConfigTarget::MainFile { path }
            | ConfigTarget::GoTemplate { path, .. }
            | ConfigTarget::DropIn { path, .. } => path,
        }
    }
}

/// A target and the reason it was chosen, for the plan output and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub target: ConfigTarget,
    pub why: &'static str,
}

fn dropin_name(handler: &HandlerName) -> String {
    format!("wasmruntime-{handler}.toml")
}

/// The drop-in decision, explicit.
///
/// - containerd 1.x: always the main file. A drop-in that mentions the CRI plugin
///   replaces the whole CRI table (containerd issue 5837; reproduced here with 1.7.24:
///   the main file's `sandbox_image` and runc `SystemdCgroup = true` vanished from
///   `config dump` once a drop-in added one runtime).
/// - containerd 2.x: plugin tables from imports are merged key by key (checked with
///   2.1.9's `config dump`), so a drop-in is safe. We use one only where the main
///   config already imports a `<dir>/*.toml` glob: otherwise we would have to edit the
///   main file anyway (to add the import), which doubles the writes and the rollback
///   surface for no isolation gain.
/// - k3s/RKE2: their Go template, the documented mechanism; k0s: its `containerd.d`,
///   the documented mechanism (k0s merges CRI drop-ins itself, which sidesteps 5837).
pub fn decide_target(
    distro: Distro,
    containerd: &ContainerdVersion,
    facts: &HostFacts,
    handler: &HandlerName,
) -> Result<Decision> {
    let native = Schema::native_for(containerd);
    match distro {
        Distro::Containerd => {
            if containerd.major >= 2
                && let Some(dir) = facts.file(CONTAINERD_CONFIG).and_then(imported_toml_dir)
            {
                return Ok(Decision {
                    target: ConfigTarget::DropIn {
                        path: dir.join(dropin_name(handler)),
                        schema: native,
                        effective: CONTAINERD_CONFIG.into(),
                    },
                    why: "containerd 2.x merges imported plugin tables, and the main config already imports this directory",
                });
            }
            Ok(Decision {
                target: ConfigTarget::MainFile {
                    path: CONTAINERD_CONFIG.into(),
                },
                why: if containerd.major < 2 {
                    "containerd 1.x: a drop-in touching the CRI plugin would replace the whole CRI table (containerd#5837)"
                } else {
                    "the main config imports no drop-in directory; editing it is one atomic write"
                },
            })
        }
        Distro::MicroK8s => Ok(Decision {
            target: ConfigTarget::MainFile {
                path: MICROK8S_TEMPLATE.into(),
            },
            why: "MicroK8s renders containerd's config from this TOML template at start",
        }),
        Distro::K3s | Distro::Rke2 => {
            let dir = Path::new(if distro == Distro::K3s {
                K3S_CONTAINERD_DIR
            } else {
                RKE2_CONTAINERD_DIR
            });
            let v2 = dir.join("config.toml.tmpl");
            let v3 = dir.join("config-v3.toml.tmpl");
            let rendered = dir.join("config.toml");
            if containerd.major < 2 {
                return Ok(Decision {
                    target: ConfigTarget::GoTemplate {
                        path: v2,
                        schema: Schema::V2,
                        rendered,
                    },
                    why: "containerd 1.x under k3s/RKE2 renders config.toml.tmpl",
                });
            }
            if !facts.exists(&v3) && facts.exists(&v2) {
                // Creating config-v3.toml.tmpl would silently make the distro ignore
                // the admin's config.toml.tmpl, which it uses while no v3 one exists.
                return Err(Error::TemplateConflict(format!(
                    "{distro} with containerd {containerd} uses {} because {} does not exist; \
                     creating the latter would drop the admin's template. Move it to \
                     config-v3.toml.tmpl (schema version 3) first",
                    v2.display(),
                    v3.display()
                )));
            }
            Ok(Decision {
                target: ConfigTarget::GoTemplate {
                    path: v3,
                    schema: Schema::V3,
                    rendered,
                },
                why: "containerd 2.x under k3s/RKE2 renders config-v3.toml.tmpl",
            })
        }
        Distro::K0s => Ok(Decision {
            target: ConfigTarget::DropIn {
                path: Path::new(K0S_DROPIN_DIR).join(dropin_name(handler)),
                schema: native,
                effective: K0S_RENDERED_CRI.into(),
            },
            why: "k0s reads drop-ins from containerd.d and merges CRI sections itself",
        }),
    }
}

/// `imports = ["/etc/containerd/conf.d/*.toml"]` -> `/etc/containerd/conf.d`. Only
/// absolute `*.toml` globs count: anything fancier we would have to evaluate like Go's
/// filepath.Glob, and a wrong guess means a drop-in containerd never reads.
fn imported_toml_dir(main_config: &str) -> Option<PathBuf> {
    let doc = parse(main_config, "the containerd config").ok()?;
    let imports = doc.get("imports")?.as_array()?;
    imports.iter().find_map(|v| {
        let dir = v.as_str()?.strip_suffix("/*.toml")?;
        (dir.starts_with('/') && !dir.contains(['*', '?', '['])).then(|| PathBuf::from(dir))
    })
}

/// What to do with the target file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    Write(String),
    Delete,
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub distro: Distro,
    pub containerd: ContainerdVersion,
    pub decision: Decision,
    /// The file's current text (None: absent).
    pub current: Option<String>,
    pub change: FileChange,
    /// How containerd must pick the change up; None when nothing changes.
    pub restart: Option<Restart>,
}

impl Plan {
    pub fn changes_anything(&self) -> bool {
        self.change != FileChange::Nothing
    }
}

/// Resolves `Auto` for targets whose runc entry lives in another (rendered) file.
fn entry_from<'a>(
    rt: &'a RuntimeSpec,
    containerd: &ContainerdVersion,
    effective: Option<&str>,
    what: &Path,
) -> Result<(Entry<'a>, Option<DocSchema>)> {
    let parsed = match effective {
        Some(text) => {
            let doc = parse(text, &format!("{}", what.display()))?;
            let schema = Schema::detect(&doc)?;
            Some(DocSchema(doc, schema))
        }
        None => None,
    };
    let entry = match (&parsed, rt.systemd_cgroup) {
        (Some(DocSchema(doc, schema)), _) => resolve_entry(rt, doc, *schema, containerd)?,
        (None, SystemdCgroupMode::Auto) => {
            return Err(Error::SystemdCgroupUnknown {
                reason: format!("{} does not exist (yet)", what.display()),
            });
        }
        (None, mode) => Entry::checked(rt, mode == SystemdCgroupMode::Enabled, containerd)?,
    };
    Ok((entry, parsed))
}

struct DocSchema(toml_edit::DocumentMut, Schema);

/// Plans an install: the one pure function between host facts and host effects.
pub fn plan_install(
    facts: &HostFacts,
    containerd: ContainerdVersion,
    distro: Distro,
    rt: &RuntimeSpec,
) -> Result<Plan> {
    let decision = decide_target(distro, &containerd, facts, &rt.handler)?;
    let current = facts.file(decision.target.path()).map(str::to_owned);
    let edit = match &decision.target {
        ConfigTarget::MainFile { .. } => {
            add_runtime(current.as_deref().unwrap_or(""), rt, &containerd)?
        }
        ConfigTarget::GoTemplate {
            path,
            schema,
            rendered,
        } => {
            let rendered_text = facts.file(rendered);
            let (entry, _) = entry_from(rt, &containerd, rendered_text, rendered)?;
            add_to_template(current.as_deref(), rendered_text, &entry, *schema, path)?
        }
        ConfigTarget::DropIn {
            path,
            schema,
            effective,
        } => {
            let (entry, parsed) = entry_from(rt, &containerd, facts.file(effective), effective)?;
            if let Some(DocSchema(mut doc, eff_schema)) = parsed {
                // A table of our name in the config we are merged into: if it is not
                // ours, the merge would silently combine two runtimes' settings.
                remove_entry(&mut doc, eff_schema, &rt.handler)?;
            }
            add_dropin(current.as_deref(), &entry, *schema, path)?
        }
    };
    let change = match edit {
        Edit::Changed(text) => FileChange::Write(text),
        Edit::Unchanged => FileChange::Nothing,
    };
    let restart = (change != FileChange::Nothing).then(|| distro.restart(facts));
    Ok(Plan {
        distro,
        containerd,
        decision,
        current,
        change,
        restart,
    })
}

/// Plans an uninstall; `backup` is what the effects layer saved before our first
/// install of this target (None: no backup known).
pub fn plan_uninstall(
    facts: &HostFacts,
    containerd: ContainerdVersion,
    distro: Distro,
    rt: &RuntimeSpec,
    backup: Option<Backup<'_>>,
) -> Result<Plan> {
    let decision = decide_target(distro, &containerd, facts, &rt.handler)?;
    let current = facts.file(decision.target.path()).map(str::to_owned);
    let removal = match (&decision.target, current.as_deref()) {
        (ConfigTarget::DropIn { path, .. }, current) => remove_dropin(current, &rt.handler, path)?,
        (_, None) => Removal::Unchanged,
        (ConfigTarget::MainFile { .. }, Some(text)) => {
            remove_runtime(text, backup, rt, &containerd)?
        }
        (
            ConfigTarget::GoTemplate {
                path,
                schema,
                rendered,
            },
            Some(text),
        ) => {
            // The entry's values only matter for recognising our untouched install;
            // fall back to "false" when runc's driver cannot be known any more.
            let entry = entry_from(rt, &containerd, facts.file(rendered), rendered)
                .map(|(e, _)| e)
                .unwrap_or(Entry::new(rt, false, &containerd));
            remove_from_template(text, backup, &entry, *schema, path)?
        }
    };
    let change = match removal {
        Removal::RestoreOriginal(text) | Removal::Changed(text) => FileChange::Write(text),
        Removal::DeleteFile => FileChange::Delete,
        Removal::Unchanged => FileChange::Nothing,
    };
    let restart = (change != FileChange::Nothing).then(|| distro.restart(facts));
    Ok(Plan {
        distro,
        containerd,
        decision,
        current,
        change,
        restart,
    })
}

/// The plan as text: target, reason, restart, and a unified diff of the file.
pub fn render_plan(plan: &Plan) -> String {
    let path = plan.decision.target.path().display().to_string();
    let mut out = format!(
        "distro: {}\ncontainerd: {}\ntarget: {path}\nwhy: {}\n",
        plan.distro, plan.containerd, plan.decision.why
    );
    match &plan.change {
        FileChange::Nothing => out.push_str("change: none (no write, no restart)\n"),
        FileChange::Delete => out.push_str("change: delete the file (wasm-installer created it)\n"),
        FileChange::Write(new) => {
            let old = plan.current.as_deref().unwrap_or("");
            let verb = if plan.current.is_some() {
                "modify"
            } else {
                "create"
            };
            out.push_str(&format!("change: {verb}\n"));
            let diff = similar::TextDiff::from_lines(old, new.as_str());
            out.push_str(
                &diff
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("{path} (current)"), &format!("{path} (planned)"))
                    .to_string(),
            );
        }
    }
    if let Some(restart) = &plan.restart {
        out.push_str(&format!("then: {restart}\n"));
    }
    out
}
