//! The site's device inventory on a reflector: registrations received here (forwarded to the
//! seed), the site's inventory pulled from the seed, and what sibling reflectors gossip, merged
//! by last-seen and kept in sled and `STATE/wake/devices.json`.

use super::*;

impl WakeState {
    /// Persists `changed` entries in the sled tree, then exports the whole inventory file.
    fn save_devices(&self, changed: &[DeviceEntry]) {
        let stored = changed.iter().try_for_each(|d| -> Result<(), String> {
            let v = serde_json::to_vec(d).map_err(|e| e.to_string())?;
            self.tree.insert(d.info.name.as_bytes(), v).map_err(|e| e.to_string())?;
            Ok(())
        });
        if let Err(e) = stored.and_then(|()| self.tree.flush().map(drop).map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "cannot store the device inventory");
        }
        let list: Vec<&DeviceEntry> = self.devices.values().collect();
        if let Err(e) = write_json(&self.dir.join("devices.json"), &list) {
            tracing::warn!(error = %e, "cannot write the device inventory file");
        }
    }

    /// Merges entries learnt elsewhere (the seed, a sibling) by last-seen, without persisting;
    /// returns those that replaced what was known. This reflector's own entry is never taken
    /// from others.
    fn merge_in_memory(&mut self, me: &str, entries: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
        let mut changed = Vec::new();
        for e in entries {
            if e.info.name != me
                && oasis_core::gossip::inventory::supersedes(self.devices.get(&e.info.name), &e)
            {
                self.devices.insert(e.info.name.clone(), e.clone());
                changed.push(e);
            }
        }
        changed
    }

    /// Device records gossiped by a verified reflector of this site (checked by the mesh):
    /// merged by last-seen. Records of another site are ignored here too.
    pub(super) fn learn_from_sibling(
        &mut self,
        fixed: &Fixed,
        sender: &str,
        records: &[InventoryRecord],
    ) -> usize {
        let entries: Vec<DeviceEntry> = records
            .iter()
            .filter(|r| Some(&r.site) == fixed.me.site.as_ref() && r.check().is_ok())
            .map(|r| r.admitted(unix_now()))
            .collect();
        let changed = self.merge_in_memory(&fixed.me.name, entries);
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|d| d.info.name.as_str()).collect();
            tracing::info!(from = %sender, devices = ?names, "inventory learnt from a sibling");
            // Counted before the inventory file shows it: whoever reads the file then the
            // metric sees both.
            fixed.metrics.gossip_learned.inc_by(changed.len() as u64);
            self.save_devices(&changed);
        }
        changed.len()
    }

    /// What this reflector gossips: every device of its site it knows, and itself.
    pub(super) fn site_records(&self, fixed: &Fixed) -> Vec<InventoryRecord> {
        let mut out: Vec<InventoryRecord> = self
            .devices
            .values()
            .filter(|d| Some(&d.info.site) == fixed.me.site.as_ref())
            .map(InventoryRecord::from_entry)
            .collect();
        out.push(InventoryRecord::from_entry(&fixed.self_entry()));
        out
    }

    /// Stores a registration received here, gossips it and queues it for the seed.
    pub(super) fn register(&mut self, entry: DeviceEntry, metrics: &WakeMetrics) {
        let name = entry.info.name.clone();
        self.devices.insert(name.clone(), entry.clone());
        if let Some(mesh) = &self.mesh {
            mesh.announce_devices(vec![InventoryRecord::from_entry(&entry)]);
        }
        self.unsent.insert(name.clone());
        self.seen.insert(name.clone(), schedule::since_epoch(jiff::Timestamp::now()));
        metrics.registrations.inc();
        tracing::info!(device = %name, "device registered");
        self.save_devices(&[entry]);
    }

    /// The registrations to forward to the seed now, with what they said.
    pub(super) fn take_unsent(&mut self) -> Vec<(String, DeviceInfo)> {
        std::mem::take(&mut self.unsent)
            .into_iter()
            .filter_map(|n| self.devices.get(&n).map(|d| (n, d.info.clone())))
            .collect()
    }

    /// Takes in what a sync with the seed brought back (`me`: this reflector, whose own entry
    /// is never taken from the seed); false when it failed.
    pub(super) fn synced(&mut self, me: &str, s: Synced) -> bool {
        self.unsent.extend(s.not_forwarded);
        if let Some(site) = s.site {
            let changed = self.merge_in_memory(me, site);
            self.save_devices(&changed);
        }
        match s.assignments {
            Some(Ok(a)) => self.assignments = a,
            Some(Err(e)) => tracing::warn!(error = %e, "cannot read site assignments"),
            None => {}
        }
        match s.error {
            Some(e) => {
                tracing::warn!(error = %e, "cannot sync the device inventory with the seed");
                false
            }
            None => true,
        }
    }

    /// Every device known, this reflector's own entry as it stands now.
    pub(super) fn inventory_with(&self, me: DeviceEntry) -> Vec<DeviceEntry> {
        let mut v: Vec<DeviceEntry> =
            self.devices.values().filter(|d| d.info.name != me.info.name).cloned().collect();
        v.push(me);
        v
    }
}

impl Fixed {
    pub(super) fn self_entry(&self) -> DeviceEntry {
        DeviceEntry {
            info: self.self_info(),
            last_seen: unix_now(),
            reported_by: self.me.name.clone(),
        }
    }

    /// This reflector's own registration.
    pub(super) fn self_info(&self) -> DeviceInfo {
        let mut info = wol::iface::self_info(
            &self.me,
            concat!("oasis-reflector ", env!("CARGO_PKG_VERSION")),
            None,
            Some(self.relay_addr),
        );
        if let Some(a) = &self.settings.addrs {
            info.addrs = a.clone();
        }
        info
    }
}

impl WakeNode {
    /// A `Register` from a peer: endpoints register themselves, siblings themselves.
    pub async fn register(&self, peer: &PeerInfo, mut info: DeviceInfo) -> Result<(), SourceError> {
        if info.name != peer.name {
            return Err(SourceError::Refused(format!(
                "{} may register only itself, not {:?}",
                peer.name, info.name
            )));
        }
        match peer.role {
            Role::Endpoint => {}
            Role::Reflector if self.fixed.same_site(peer) => {}
            _ => {
                return Err(SourceError::Refused(format!(
                    "{} {} may not register here",
                    peer.role, peer.name
                )))
            }
        }
        info.role = peer.role.to_string();
        info.site = peer.site.clone().unwrap_or_default();
        let reported_by = self.fixed.me.name.clone();
        let entry = DeviceEntry { info, last_seen: unix_now(), reported_by };
        self.ask(|done| Command::Register { entry, done })
            .await
            .ok_or_else(|| SourceError::Unavailable("the reflector is shutting down".into()))
    }

    /// The site's assignments for an endpoint of the site (what a woken machine fetches).
    pub async fn assignments(&self, peer: &PeerInfo) -> Vec<oasis_core::wire::Assignment> {
        if !self.fixed.same_site(peer) {
            return Vec::new();
        }
        self.ask(Command::Assignments).await.unwrap_or_default()
    }

    /// The site inventory, for siblings.
    pub async fn devices(&self, peer: &PeerInfo) -> Result<Vec<DeviceEntry>, SourceError> {
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && self.fixed.same_site(peer))
        {
            return Err(SourceError::Refused(format!(
                "{} {} may not read this site's inventory",
                peer.role, peer.name
            )));
        }
        self.ask(Command::Devices)
            .await
            .ok_or_else(|| SourceError::Unavailable("the reflector is shutting down".into()))
    }

    /// Device records gossiped by a verified reflector of this site; how many were new.
    pub async fn learn_from_sibling(&self, sender: &str, records: Vec<InventoryRecord>) -> usize {
        let sender = sender.to_string();
        self.ask(|learnt| Command::FromSibling { sender, records, learnt }).await.unwrap_or(0)
    }

    /// What this reflector gossips: every device of its site it knows, and itself.
    pub async fn site_records(&self) -> Vec<InventoryRecord> {
        self.ask(Command::SiteRecords).await.unwrap_or_default()
    }
}

/// What a sync with the seed brought back, for the wake task to take in.
pub(super) struct Synced {
    /// Registrations still to forward.
    not_forwarded: Vec<String>,
    /// The site's inventory as the seed has it.
    site: Option<Vec<DeviceEntry>>,
    assignments: Option<Result<Vec<oasis_core::wire::Assignment>, String>>,
    error: Option<String>,
}

/// Pushes our own and the unsent registrations to the seed, then pulls the site's inventory
/// and assignments. Runs beside the wake task's loop.
pub(super) async fn sync_with_seed(fixed: Arc<Fixed>, unsent: Vec<(String, DeviceInfo)>) -> Synced {
    let mut out = Synced {
        not_forwarded: unsent.iter().map(|(n, _)| n.clone()).collect(),
        site: None,
        assignments: None,
        error: None,
    };
    let Some(client) = fixed.upstream.wait(Duration::from_secs(3)).await else {
        out.error = Some(fixed.upstream.trouble());
        return out;
    };
    if let Err(e) = client.register(&fixed.self_info()).await {
        out.error = Some(e.to_string());
        return out;
    }
    for (i, (name, info)) in unsent.iter().enumerate() {
        if let Err(e) = client.register(info).await {
            if e.remote_code() == Some(oasis_core::wire::ErrorCode::Forbidden) {
                // The seed will never take it (e.g. a device of another site): say so once.
                tracing::warn!(device = %name, error = %e, "the seed refused a forwarded registration");
                continue;
            }
            // Keep what is not forwarded yet for the next sync.
            out.not_forwarded = unsent[i..].iter().map(|(n, _)| n.clone()).collect();
            out.error = Some(format!("forwarding the registration of {name}: {e}"));
            return out;
        }
    }
    out.not_forwarded.clear();
    match client.devices().await {
        Ok(site) => out.site = Some(site),
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    }
    out.assignments = Some(client.assignments().await.map_err(|e| e.to_string()));
    out
}
