//! What a pruning job saw, per head: its singular values, their scores and where each stood in
//! the ranking. One ranking serves every portion: at portion p the first floor(N * p) ranks
//! are pruned, so a head's pruned set at any portion is `rank < cutoff(p)`.

use crate::attribution::Scores;
use crate::svd::SiteSvd;
use crate::trace::Component;
use crate::Result;

/// One head of one (layer, component) site.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSpectrum {
    pub layer: usize,
    pub component: Component,
    pub head: usize,
    /// Singular values, largest first (the SVD's order).
    pub singular_values: Vec<f32>,
    /// The attribution score of each singular value (lower: more harmful to the task).
    pub scores: Vec<f32>,
    /// Each singular value's place in the job's ranking (0 is pruned first).
    pub rank: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    pub heads: Vec<HeadSpectrum>,
    /// Candidates ranked (the sum of every head's singular values).
    pub candidates: usize,
}

/// How many of `candidates` a portion prunes ([`crate::prune::select`]'s count).
pub fn cutoff(candidates: usize, portion: f64) -> usize {
    (candidates as f64 * portion).floor() as usize
}

impl Analysis {
    /// `order` lists (site, head, index) from the first pruned to the last
    /// ([`crate::prune::ranking`]).
    pub fn of(svds: &[SiteSvd], scores: &Scores, order: &[(usize, usize, usize)]) -> Result<Self> {
        let mut heads = Vec::new();
        let mut place: Vec<Vec<usize>> = Vec::new();
        for (si, site) in svds.iter().enumerate() {
            place.push(Vec::new());
            for (hi, h) in site.heads.iter().enumerate() {
                place[si].push(heads.len());
                heads.push(HeadSpectrum {
                    layer: site.layer,
                    component: site.component,
                    head: hi,
                    singular_values: h.s.to_vec1()?,
                    scores: scores.scores[si][hi].clone(),
                    rank: vec![u32::MAX; h.rank()],
                });
            }
        }
        for (r, &(si, hi, i)) in order.iter().enumerate() {
            heads[place[si][hi]].rank[i] = r as u32;
        }
        Ok(Self {
            heads,
            candidates: order.len(),
        })
    }
}
