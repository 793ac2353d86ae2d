//! The site's device inventory on a reflector: registrations received here (forwarded to the
//! seed), the site's inventory pulled from the seed, and what sibling reflectors gossip, merged
//! by last-seen and kept in sled and `STATE/wake/devices.json`.

use super::*;

impl WakeNode {
    /// Persists `changed` entries in the sled tree, then exports the whole inventory file.
    pub(super) fn save_devices(&self, changed: &[DeviceEntry]) {
        let stored = changed.iter().try_for_each(|d| -> Result<(), String> {
            let v = serde_json::to_vec(d).map_err(|e| e.to_string())?;
            self.tree.insert(d.info.name.as_bytes(), v).map_err(|e| e.to_string())?;
            Ok(())
        });
        if let Err(e) = stored.and_then(|()| self.tree.flush().map(drop).map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "cannot store the device inventory");
        }
        let list: Vec<DeviceEntry> =
            self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        if let Err(e) = write_json(&self.dir.join("devices.json"), &list) {
            tracing::warn!(error = %e, "cannot write the device inventory file");
        }
    }

    /// Merges entries learnt elsewhere (the seed, a sibling) by last-seen; returns those that
    /// replaced what was known. This reflector's own entry is never taken from others.
    pub(super) fn merge(&self, entries: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
        let changed = self.merge_in_memory(entries);
        self.save_devices(&changed);
        changed
    }

    /// [`Self::merge`] without persisting: the caller saves once it has counted the change.
    pub(super) fn merge_in_memory(&self, entries: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
        let mut changed = Vec::new();
        {
            let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries {
                if e.info.name != self.me.name
                    && oasis_core::gossip::inventory::supersedes(d.get(&e.info.name), &e)
                {
                    d.insert(e.info.name.clone(), e.clone());
                    changed.push(e);
                }
            }
        }
        changed
    }

    /// Device records gossiped by a verified reflector of this site (checked by the mesh):
    /// merged by last-seen. Records of another site are ignored here too.
    pub fn learn_from_sibling(&self, sender: &str, records: &[InventoryRecord]) -> usize {
        let entries: Vec<DeviceEntry> = records
            .iter()
            .filter(|r| Some(&r.site) == self.me.site.as_ref() && r.check().is_ok())
            .map(InventoryRecord::to_entry)
            .collect();
        let changed = self.merge_in_memory(entries);
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|d| d.info.name.as_str()).collect();
            tracing::info!(from = %sender, devices = ?names, "inventory learnt from a sibling");
            // Counted before the inventory file shows it: whoever reads the file then the
            // metric sees both.
            self.metrics.gossip_learned.inc_by(changed.len() as u64);
            self.save_devices(&changed);
            // Scheduled runs see machines that came online at a sibling.
            self.changed.notify_one();
        }
        changed.len()
    }

    /// What this reflector gossips: every device of its site it knows, and itself.
    pub fn site_records(&self) -> Vec<InventoryRecord> {
        let mut out: Vec<InventoryRecord> = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|d| Some(&d.info.site) == self.me.site.as_ref())
            .map(InventoryRecord::from_entry)
            .collect();
        out.push(InventoryRecord::from_entry(&self.self_entry()));
        out
    }

    pub(super) fn self_entry(&self) -> DeviceEntry {
        DeviceEntry {
            info: self.self_info(),
            last_seen: unix_now(),
            reported_by: self.me.name.clone(),
        }
    }

    /// This reflector's own registration.
    pub fn self_info(&self) -> DeviceInfo {
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
            Role::Reflector if self.same_site(peer) => {}
            _ => {
                return Err(SourceError::Refused(format!(
                    "{} {} may not register here",
                    peer.role, peer.name
                )))
            }
        }
        info.role = peer.role.to_string();
        info.site = peer.site.clone().unwrap_or_default();
        let name = info.name.clone();
        let entry = DeviceEntry { info, last_seen: unix_now(), reported_by: self.me.name.clone() };
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), entry.clone());
        if let Some(mesh) = &*self.mesh.lock().unwrap_or_else(|e| e.into_inner()) {
            mesh.announce_devices(vec![InventoryRecord::from_entry(&entry)]);
        }
        self.unsent.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), schedule::since_epoch(jiff::Timestamp::now()));
        self.metrics.registrations.inc();
        tracing::info!(device = %name, "device registered");
        self.save_devices(&[entry]);
        self.changed.notify_one();
        Ok(())
    }

    /// The site's assignments for an endpoint of the site (what a woken machine fetches).
    pub fn assignments(&self, peer: &PeerInfo) -> Vec<oasis_core::wire::Assignment> {
        if !self.same_site(peer) {
            return Vec::new();
        }
        self.assignments.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The site inventory, for siblings.
    pub fn devices(&self, peer: &PeerInfo) -> Result<Vec<DeviceEntry>, SourceError> {
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && self.same_site(peer)) {
            return Err(SourceError::Refused(format!(
                "{} {} may not read this site's inventory",
                peer.role, peer.name
            )));
        }
        Ok(self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect())
    }

    /// Pushes our own and unsent registrations to the seed and pulls the site's inventory.
    pub(super) async fn sync_with_seed(&self) -> Result<Option<Client>, String> {
        let Some(client) = self.upstream.wait(Duration::from_secs(3)).await else {
            return Err(self.upstream.trouble());
        };
        client.register(&self.self_info()).await.map_err(|e| e.to_string())?;
        let unsent: Vec<String> =
            std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        for (i, name) in unsent.iter().enumerate() {
            let info = self
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .map(|d| d.info.clone());
            let Some(info) = info else { continue };
            if let Err(e) = client.register(&info).await {
                if e.remote_code() == Some(oasis_core::wire::ErrorCode::Forbidden) {
                    // The seed will never take it (e.g. a device of another site): say so once.
                    tracing::warn!(device = %name, error = %e, "the seed refused a forwarded registration");
                    continue;
                }
                // Keep what is not forwarded yet for the next sync.
                let mut u = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
                u.extend(unsent[i..].iter().cloned());
                return Err(format!("forwarding the registration of {name}: {e}"));
            }
        }
        let site = client.devices().await.map_err(|e| e.to_string())?;
        self.merge(site);
        Ok(Some(client))
    }
}
