//! A TCP proxy on loopback between the agent and the control plane, whose link can
//! be cut (every connection dropped, new ones refused) and restored on the same port;
//! with several targets, a balancer: each new connection goes to the next one
//! that accepts it, as a load balancer in front of replicas would.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct TcpProxy {
    pub addr: SocketAddr,
    targets: Vec<SocketAddr>,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        Self::balance(vec![target]).await
    }

    /// Round robin over `targets`, passing over those that refuse.
    pub async fn balance(targets: Vec<SocketAddr>) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpProxy {
            addr: listener.local_addr().unwrap(),
            targets,
            running: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let targets = self.targets.clone();
        let task = tokio::spawn(async move {
            let mut next = 0;
            // Owned here: aborting this task drops the set, which aborts every link.
            let mut links = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let order: Vec<SocketAddr> = (0..targets.len())
                    .map(|i| targets[(next + i) % targets.len()])
                    .collect();
                next += 1;
                links.spawn(async move {
                    for target in order {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
                while links.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }

    /// Drops every connection and stops listening: the network is down.
    pub fn cut(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the proxy's port is free again");
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
