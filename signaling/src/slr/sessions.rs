//! [`SlrControl`]'s signalling sessions: the events of the upper level, the
//! lower levels, same-level neighbours and the hot spare, and WHOHAS between
//! them.

use super::*;

impl SlrControl {
    /// Handles one event of `session`.
    pub fn handle_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        if self.upstream.is_some_and(|up| up.session == session) {
            self.upstream_event(now, session, event, api);
        } else if self.neighbours.contains_key(&session) {
            self.neighbour_event(now, session, event, api);
        } else if self.spares.contains_key(&session) {
            self.spare_event(session, event);
        } else if let PeerEvent::Registered {
            identity,
            level,
            role,
            epoch,
        } = event
        {
            self.downstream_registered(session, identity, level, role, epoch);
        } else {
            self.downstream_event(now, session, event, api);
        }
    }

    /// An event of the session to the upper level.
    fn upstream_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        match event {
            PeerEvent::Registered { identity, .. } => {
                up.registered = true;
                debug!(upper = %identity, "registered with the upper level");
                let session = up.session;
                self.advertise(session);
            }
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "upper level session down");
                self.upstream = None;
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) if up.registered => self.answer_whohas(now, session, &q, api),
            PeerEvent::WhoHasAnswer(a) if up.registered => {
                self.whohas_answer(now, session, &a, api);
            }
            _ => self.stats.ignored_events += 1,
        }
    }

    /// A session from below registered: a lower-level peer joins the table; a
    /// spare or an SLR of our own level goes to `same_level_registered`.
    fn downstream_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
        epoch: Epoch,
    ) {
        let expected = self.expected_downstream_role();
        let own = self.own_role();
        let Some(ds) = self.downstream.get_mut(&session) else {
            self.stats.ignored_events += 1;
            return;
        };
        if role == Role::Spare || role == own {
            self.downstream.remove(&session);
            self.same_level_registered(session, identity, level, role);
            return;
        }
        if role != expected {
            self.stats.unexpected_roles += 1;
            warn!(peer = %identity, ?role, ?expected, "peer of the wrong role refused");
            self.actions.push_back(SlrAction::Close { session });
            return;
        }
        match self
            .table
            .register(&identity, ds.addr, ds.route_cost, epoch)
        {
            Ok(()) => {
                self.stats.registrations += 1;
                ds.registered = Some((identity, epoch));
            }
            Err(TableError::PeersFull { .. }) => {
                self.stats.table_full += 1;
                self.actions.push_back(SlrAction::Close { session });
            }
            Err(e) => {
                warn!(error = %e, "registration refused");
                self.actions.push_back(SlrAction::Close { session });
            }
        }
    }

    /// Any other event of a session from below.
    fn downstream_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        let Some(ds) = self.downstream.get_mut(&session) else {
            self.stats.ignored_events += 1;
            return;
        };
        match event {
            PeerEvent::StateUpdate(u) => {
                let Some((name, epoch)) = &ds.registered else {
                    self.stats.updates_ignored += 1;
                    return;
                };
                if self.table.handle_update(now, name, *epoch, &u).is_err() {
                    self.stats.updates_ignored += 1;
                }
            }
            PeerEvent::TunnelObject(obj) => {
                let sender = ds.addr;
                if ds.registered.is_none() {
                    self.stats.shortcuts_refused += 1;
                    return;
                }
                match install_shortcut(api, &obj, sender, now) {
                    Ok(()) => {
                        self.stats.shortcuts_installed += 1;
                        self.pass_on(obj);
                    }
                    Err(e) => {
                        self.stats.shortcuts_refused += 1;
                        debug!(error = %e, "tunnel object refused");
                    }
                }
            }
            PeerEvent::PeerDown { reason } => {
                if let Some((name, epoch)) = &ds.registered {
                    debug!(peer = %name, %reason, "lower-level peer down");
                    // Refused only for an old epoch, which cannot be the one stored here.
                    let _ = self.table.peer_down(name, *epoch);
                    self.actions
                        .push_back(SlrAction::NextHopDown { addr: ds.addr });
                }
                self.downstream.remove(&session);
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) => {
                if ds.registered.is_none() {
                    self.recovery.stats.whohas_refused_session += 1;
                    return;
                }
                self.answer_whohas(now, session, &q, api);
            }
            PeerEvent::WhoHasAnswer(a) => self.whohas_answer(now, session, &a, api),
            _ => self.stats.ignored_events += 1,
        }
    }

    /// The role an SLR of our level registers with.
    fn own_role(&self) -> Role {
        match self.cfg.level {
            Level::Network => Role::Network,
            Level::System => Role::System,
            Level::Site => Role::Site,
        }
    }

    /// A session we accepted registered with our own role (a neighbour) or as a
    /// spare: admitted only with our level and a listed name.
    fn same_level_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
    ) {
        if role == Role::Spare {
            if level == self.cfg.level && self.recovery.scope.spares.contains(&identity) {
                self.admit_spare(session, identity);
            } else {
                self.stats.unexpected_roles += 1;
                self.recovery.stats.spares_refused += 1;
                warn!(peer = %identity, ?level, "spare not listed for this SLR refused");
                self.actions.push_back(SlrAction::Close { session });
            }
            return;
        }
        self.neighbours.insert(session, Neighbour { name: None });
        self.neighbour_registered(session, identity, level, role);
    }

    fn neighbour_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
    ) {
        let listed = self.recovery.scope.neighbours.contains(&identity);
        if level != self.cfg.level || role != self.own_role() || !listed {
            self.recovery.stats.neighbours_refused += 1;
            warn!(peer = %identity, ?level, ?role, listed, "same-level peer refused as a neighbour");
            self.neighbours.remove(&session);
            self.actions.push_back(SlrAction::Close { session });
            return;
        }
        self.recovery.stats.neighbours_registered += 1;
        debug!(neighbour = %identity, "neighbour registered");
        if let Some(n) = self.neighbours.get_mut(&session) {
            n.name = Some(identity);
        }
    }

    fn admit_spare(&mut self, session: SessionId, name: NodeName) {
        self.recovery.stats.spares_registered += 1;
        debug!(spare = %name, "hot spare registered");
        self.spares.insert(session, name.clone());
        self.actions
            .push_back(SlrAction::SpareRegistered { session, name });
    }

    fn spare_event(&mut self, session: SessionId, event: PeerEvent) {
        match event {
            PeerEvent::Registered {
                identity,
                level,
                role,
                ..
            } => {
                // A re-registration (new epoch): resync only if still acceptable.
                self.spares.remove(&session);
                self.same_level_registered(session, identity, level, role);
                if !self.spares.contains_key(&session) {
                    // Refused (or now a neighbour): stop mirroring to it.
                    self.actions.push_back(SlrAction::SpareDown { session });
                }
            }
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "hot spare session down");
                self.spares.remove(&session);
                self.actions.push_back(SlrAction::SpareDown { session });
            }
            _ => self.stats.ignored_events += 1,
        }
    }

    fn neighbour_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        match event {
            PeerEvent::Registered {
                identity,
                level,
                role,
                ..
            } => self.neighbour_registered(session, identity, level, role),
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "neighbour session down");
                self.neighbours.remove(&session);
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) => {
                if self
                    .neighbours
                    .get(&session)
                    .is_some_and(|n| n.name.is_some())
                {
                    self.answer_whohas(now, session, &q, api);
                } else {
                    self.recovery.stats.whohas_refused_session += 1;
                }
            }
            PeerEvent::WhoHasAnswer(a) => self.whohas_answer(now, session, &a, api),
            _ => self.stats.ignored_events += 1,
        }
    }

    fn answer_whohas<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        q: &crate::message::WhoHas,
        api: &A,
    ) {
        if let Some(answer) = self.recovery.answer(session, q, now, api) {
            self.actions.push_back(SlrAction::Send {
                session,
                message: Outgoing::WhoHasAnswer(answer),
            });
        }
    }

    fn whohas_answer<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        a: &crate::message::WhoHasAnswer,
        api: &mut A,
    ) {
        if let Some(r) = self
            .recovery
            .handle_answer(session, a, self.cfg.level, now, api)
        {
            self.actions.push_back(SlrAction::FlowRecovered {
                key: r.key,
                next_hop: r.next_hop,
            });
        }
    }
}
