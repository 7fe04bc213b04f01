//! Samples how many connections the database holds while a mode runs.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::{BackendConn, Flavor};
use crate::config::BackendTarget;

/// One observation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the mode started.
    pub t_ms: u64,
    /// Connections of the benchmark's database users (the sampler's own excluded).
    pub user_connections: u64,
    /// The server's `Threads_connected`, all users.
    pub threads_connected: u64,
}

/// A background task holding its own connection and sampling every `every`.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Connects (before the burst, so it is never refused) and starts sampling the
    /// connections of `users`.
    pub async fn start(
        target: BackendTarget,
        users: &[String],
        every: Duration,
    ) -> anyhow::Result<Sampler> {
        let mut conn =
            BackendConn::connect(&target, Flavor::INTERNAL, Duration::from_secs(10)).await?;
        let users = super::workload::user_list(users);
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ({users}) AND ID <> CONNECTION_ID()), \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED')"
        );
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                if let Ok(Ok(rows)) = conn.query_text(&sql).await {
                    let value = |i: usize| {
                        rows.first()
                            .and_then(|r| r.get(i).cloned().flatten())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0)
                    };
                    samples.push(Sample {
                        t_ms: started.elapsed().as_millis() as u64,
                        user_connections: value(0),
                        threads_connected: value(1),
                    });
                }
                if last {
                    return samples;
                }
            }
        });
        Ok(Sampler { stop, task })
    }

    /// Takes a last sample and returns them all.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
