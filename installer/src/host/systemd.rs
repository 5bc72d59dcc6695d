//! The `systemd` restart: `RestartUnit` on PID 1's manager over D-Bus (zbus), no
//! shell, no nsenter. systemd's private socket is preferred (it works without a
//! D-Bus daemon, e.g. early or minimal hosts); the system bus is the fallback.
//!
//! Not exercised against a real systemd here (these machines do not run systemd as
//! PID 1); the strategy's selection and its effect are tested with the recording fake
//! of the `Host` trait.

use std::path::Path;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::distro::Unit;
use crate::error::{Error, Result};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

pub(crate) fn restart_unit(root: &Path, unit: Unit, timeout: Duration) -> Result<()> {
    let fail = |reason: String| Error::Restart {
        strategy: format!("systemd {}", unit.name()),
        reason,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    rt.block_on(async {
        tokio::time::timeout(timeout, restart(root, unit))
            .await
            .map_err(|_| fail(format!("not active again within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))
    })
}

async fn connect(root: &Path) -> zbus::Result<(zbus::Connection, Option<&'static str>)> {
    let private = super::real::under(root, Path::new("/run/systemd/private"));
    if let Ok(stream) = tokio::net::UnixStream::connect(&private).await {
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await?;
        return Ok((conn, None));
    }
    let bus = super::real::under(root, Path::new("/run/dbus/system_bus_socket"));
    let conn = zbus::connection::Builder::address(format!("unix:path={}", bus.display()).as_str())?
        .build()
        .await?;
    Ok((conn, Some(DEST)))
}

async fn get_property(
    conn: &zbus::Connection,
    dest: Option<&str>,
    path: &OwnedObjectPath,
    iface: &str,
    name: &str,
) -> zbus::Result<OwnedValue> {
    let reply = conn
        .call_method(dest, path, Some(PROPERTIES), "Get", &(iface, name))
        .await?;
    reply.body().deserialize::<OwnedValue>()
}

async fn restart(root: &Path, unit: Unit) -> zbus::Result<()> {
    let (conn, dest) = connect(root).await?;
    let reply = conn
        .call_method(
            dest,
            MANAGER_PATH,
            Some(MANAGER),
            "RestartUnit",
            &(unit.name(), "replace"),
        )
        .await?;
    let job: OwnedObjectPath = reply.body().deserialize()?;
    // The job object disappears when the restart job has finished.
    while get_property(&conn, dest, &job, "org.freedesktop.systemd1.Job", "State")
        .await
        .is_ok()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = conn
        .call_method(
            dest,
            MANAGER_PATH,
            Some(MANAGER),
            "GetUnit",
            &(unit.name(),),
        )
        .await?;
    let unit_path: OwnedObjectPath = reply.body().deserialize()?;
    let started = Instant::now();
    loop {
        let state = get_property(
            &conn,
            dest,
            &unit_path,
            "org.freedesktop.systemd1.Unit",
            "ActiveState",
        )
        .await?;
        let state = String::try_from(state).unwrap_or_default();
        match state.as_str() {
            "active" => return Ok(()),
            "failed" => {
                return Err(zbus::Error::Failure(format!(
                    "{} is failed after the restart",
                    unit.name()
                )));
            }
            _ => {
                tracing::debug!(state, elapsed = ?started.elapsed(), "waiting for the unit");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
