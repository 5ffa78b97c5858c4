//! Dynamic batching: one thread owns the model; requests' work queues and is run together, up
//! to a batch of images, waiting at most a few milliseconds for a batch to fill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use candle_core::{DType, Device};

use crate::classifier::Classifier;
use crate::model::{EmbeddingKind, TextTower};
use crate::one_line;
use crate::preprocess::PixelValues;
use crate::zero_shot::ZeroShot;

/// What a request asks of the model.
pub enum Work {
    /// Each image's embedding of `kind`.
    Embed {
        images: Vec<PixelValues>,
        kind: EmbeddingKind,
    },
    /// Each image's logits: the model's head, or zero-shot `labels` put into a template.
    Logits {
        images: Vec<PixelValues>,
        labels: Option<(Vec<String>, String)>,
    },
    /// Each text's embedding (image-text models).
    Texts(Vec<String>),
}

impl Work {
    /// Its images (a text counts for none).
    fn images(&self) -> usize {
        match self {
            Self::Embed { images, .. } | Self::Logits { images, .. } => images.len(),
            Self::Texts(_) => 0,
        }
    }
}

/// Places held in the queue, given back when dropped: taken before a request's images are
/// decoded (so that a full queue costs a refused request nothing), held until its answer.
pub struct Ticket {
    queued: Arc<AtomicUsize>,
    places: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.places, Ordering::SeqCst);
    }
}

/// The rows a request gets back, one per image or text, or why it has none.
pub type Rows = std::result::Result<Vec<Vec<f32>>, String>;

struct Job {
    work: Work,
    reply: tokio::sync::oneshot::Sender<Rows>,
    /// Given back once the job is answered.
    _ticket: Ticket,
}

/// What a batch of the worker did, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct BatchReport {
    pub images: usize,
}

/// The queue in front of the model's thread.
pub struct Batcher {
    sender: mpsc::Sender<Job>,
    /// Places taken in the queue (images waiting or running).
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

/// Why work was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `capacity` places already.
    Full,
    /// The model's thread has stopped.
    Stopped,
}

impl Batcher {
    /// Starts the model's thread: batches of up to `max_batch` images, a batch waits at most
    /// `max_wait` for more after its first request; `capacity` places in the queue.
    /// `on_batch` hears of every batch run.
    pub fn start(
        classifier: Classifier,
        text: Option<TextTower>,
        max_batch: usize,
        max_wait: Duration,
        capacity: usize,
        on_batch: impl Fn(BatchReport) + Send + 'static,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            classifier,
            text,
            zero_shot: HashMap::new(),
            max_batch: max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("vit-model".into())
            .spawn(move || worker.run(receiver, max_wait, on_batch))
            .expect("the model's thread starts");
        Self {
            sender,
            queued,
            capacity,
        }
    }

    /// Takes `places` in the queue (at least one), or refuses when they do not fit; a request
    /// larger than the whole queue still runs when the queue is empty.
    pub fn reserve(&self, places: usize) -> std::result::Result<Ticket, Refused> {
        let places = places.max(1);
        let before = self.queued.fetch_add(places, Ordering::SeqCst);
        let ticket = Ticket {
            queued: self.queued.clone(),
            places,
        };
        match before + places > self.capacity && before > 0 {
            true => Err(Refused::Full),
            false => Ok(ticket),
        }
    }

    /// Queues `work` on the places of `ticket`: its answer comes on the returned channel.
    pub fn submit(
        &self,
        ticket: Ticket,
        work: Work,
    ) -> std::result::Result<tokio::sync::oneshot::Receiver<Rows>, Refused> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            work,
            reply,
            _ticket: ticket,
        };
        self.sender.send(job).map_err(|_| Refused::Stopped)?;
        Ok(answer)
    }

    /// Places taken in the queue now.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// The model's thread.
struct Worker {
    classifier: Classifier,
    text: Option<TextTower>,
    /// Label embeddings by (labels, template), made once.
    zero_shot: HashMap<(Vec<String>, String), Arc<ZeroShot>>,
    max_batch: usize,
}

/// How jobs share a forward pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Embed(EmbeddingKind),
    Head,
    ZeroShot,
    Texts,
}

impl Worker {
    fn run(
        mut self,
        receiver: mpsc::Receiver<Job>,
        max_wait: Duration,
        on_batch: impl Fn(BatchReport),
    ) {
        // Ends when every sender has gone (the server has stopped) and the queue is empty.
        while let Ok(first) = receiver.recv() {
            let mut images = first.work.images();
            let mut jobs = vec![first];
            let deadline = Instant::now() + max_wait;
            while images < self.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(left) {
                    Ok(job) => {
                        images += job.work.images();
                        jobs.push(job);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            on_batch(BatchReport { images });
            self.run_jobs(jobs);
        }
    }

    /// Runs jobs that share a pass together and answers each.
    fn run_jobs(&mut self, jobs: Vec<Job>) {
        let mut groups: Vec<(Pass, Vec<Job>)> = Vec::new();
        for job in jobs {
            let pass = match &job.work {
                Work::Embed { kind, .. } => Pass::Embed(*kind),
                Work::Logits { labels: None, .. } => Pass::Head,
                Work::Logits {
                    labels: Some(_), ..
                } => Pass::ZeroShot,
                Work::Texts(_) => Pass::Texts,
            };
            match groups.iter_mut().find(|(p, _)| *p == pass) {
                Some((_, group)) => group.push(job),
                None => groups.push((pass, vec![job])),
            }
        }
        for (_, group) in groups {
            let works: Vec<&Work> = group.iter().map(|job| &job.work).collect();
            // A panic in the model's code is these requests' error, never the thread's end.
            let answers =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(&works)))
                    .unwrap_or_else(|_| {
                        let message = "the model panicked on this batch".to_string();
                        works.iter().map(|_| Err(message.clone())).collect()
                    });
            for (job, answer) in group.into_iter().zip(answers) {
                // A client that has gone no longer waits for its answer.
                let _ = job.reply.send(answer);
            }
        }
    }

    /// The answers of works that share a pass, in order.
    fn answer(&mut self, works: &[&Work]) -> Vec<Rows> {
        if let [Work::Texts(_), ..] = works {
            return works
                .iter()
                .map(|work| match work {
                    Work::Texts(texts) => self.texts(texts).map_err(|e| one_line(&e)),
                    _ => Err("mixed work".to_string()),
                })
                .collect();
        }
        let images: Vec<&PixelValues> = works
            .iter()
            .flat_map(|work| match work {
                Work::Embed { images, .. } | Work::Logits { images, .. } => images.iter(),
                Work::Texts(_) => [].iter(),
            })
            .collect();
        let rows = match self.image_rows(works[0], &images) {
            Ok(rows) => rows,
            Err(err) => return works.iter().map(|_| Err(one_line(&err))).collect(),
        };
        let mut rows = rows.into_iter();
        works
            .iter()
            .map(|work| {
                let (images, labels) = match work {
                    Work::Embed { images, .. } => (images, &None),
                    Work::Logits { images, labels } => (images, labels),
                    Work::Texts(_) => unreachable!("texts are answered above"),
                };
                let own: Vec<Vec<f32>> = rows.by_ref().take(images.len()).collect();
                match labels {
                    None => Ok(own),
                    Some((labels, template)) => self
                        .zero_shot_logits(labels, template, own)
                        .map_err(|e| one_line(&e)),
                }
            })
            .collect()
    }

    /// One row per image: embeddings of `first`'s kind, the head's logits, or the model's own
    /// embedding (for zero-shot labels), in batches of at most `max_batch`.
    fn image_rows(&self, first: &Work, images: &[&PixelValues]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(images.len());
        for chunk in self.batches(images) {
            match first {
                Work::Embed { kind, .. } => rows.extend(
                    self.classifier
                        .embeddings(&chunk, *kind)?
                        .into_iter()
                        .map(|(values, _)| values),
                ),
                Work::Logits { labels: None, .. } => rows.extend(self.classifier.logits(&chunk)?),
                Work::Logits {
                    labels: Some(_), ..
                } => rows.extend(
                    self.classifier
                        .embeddings(&chunk, EmbeddingKind::Auto)?
                        .into_iter()
                        .map(|(values, _)| values),
                ),
                Work::Texts(_) => unreachable!("texts have no images"),
            }
        }
        Ok(rows)
    }

    /// `images` cut into batches of at most `max_batch` whose images share one size.
    fn batches<'a>(&self, images: &[&'a PixelValues]) -> Vec<Vec<&'a PixelValues>> {
        let mut batches: Vec<Vec<&PixelValues>> = Vec::new();
        for &image in images {
            match batches.last_mut() {
                Some(batch)
                    if batch.len() < self.max_batch
                        && (batch[0].height, batch[0].width) == (image.height, image.width) =>
                {
                    batch.push(image)
                }
                _ => batches.push(vec![image]),
            }
        }
        batches
    }

    fn texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let Some(text) = &self.text else {
            return Err(anyhow!("the model has no text tower"));
        };
        Ok(text
            .embed(texts)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }

    fn zero_shot_logits(
        &mut self,
        labels: &[String],
        template: &str,
        embeddings: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(text) = &self.text else {
            return Err(anyhow!("labels need an image-text model (CLIP, SigLIP)"));
        };
        let cache_key = (labels.to_vec(), template.to_string());
        let zero_shot = match self.zero_shot.get(&cache_key) {
            Some(zero_shot) => zero_shot.clone(),
            None => {
                let device = self.classifier.device.clone();
                let made = Arc::new(ZeroShot::new(text, labels.to_vec(), template, &device)?);
                // A bounded cache: label sets differ per client.
                if self.zero_shot.len() >= 64 {
                    self.zero_shot.clear();
                }
                self.zero_shot.insert(cache_key, made.clone());
                made
            }
        };
        let width = embeddings.first().map_or(0, Vec::len);
        let flat: Vec<f32> = embeddings.concat();
        let embeds = candle_core::Tensor::from_vec(
            flat,
            (embeddings.len(), width),
            &self.classifier.device,
        )?;
        Ok(zero_shot
            .logits(&embeds)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }
}
